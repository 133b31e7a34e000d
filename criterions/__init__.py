"""ONE-PEACE fairseq criteria; importing this package registers every criterion module in it."""
import importlib
import pkgutil

for _module in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    importlib.import_module(_module.name)
