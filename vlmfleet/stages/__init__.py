"""The deploy stages, one module each; every stage is a pyinfra ``@deploy`` usable on its own."""
