"""Stand-ins for what cannot exist in the lab: a GPU (nvidia-smi), the public hubs, vLLM serving a model.

Each says in its name and docstring that it is a stand-in, speaks the real protocol, and is used only by the
lab (group_data/lab.py); no production default points at one.
"""
