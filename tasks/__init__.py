"""ONE-PEACE fairseq tasks; importing this package registers every task module in it."""
import importlib
import pkgutil

for _module in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    importlib.import_module(_module.name)
