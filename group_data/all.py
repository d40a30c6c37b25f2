"""Fleet-wide defaults. Every key has one documented default here and a row in the README's table.

Group files (group_data/<group>.py) and host data in the inventory override these.
"""

#: TCP port of the hello service (stage hello), e.g. 9099.
hello_port = 9099
