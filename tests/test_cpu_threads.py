"""CPU processes of one run on one machine take a share of its cores (``fairseq_glue/cpu_threads.py``): with one
thread per core in each, two processes on two cores ran the README's two-process example 4x slower."""
import pytest
import torch
from omegaconf import OmegaConf

from one_peace.fairseq_glue import cpu_threads


def config(world=2, method="tcp://127.0.0.1:29500", cpu=True):
    return OmegaConf.create({"common": {"cpu": cpu},
                             "distributed_training": {"distributed_world_size": world,
                                                      "distributed_init_method": method}})


@pytest.fixture
def machine(monkeypatch):
    """8 usable cores, torch at 8 threads, no launcher variables; the thread count is restored afterwards."""
    before = torch.get_num_threads()
    for variable in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 8)
    torch.set_num_threads(8)
    yield monkeypatch
    torch.set_num_threads(before)


def test_processes_on_one_machine_share_its_cores(machine):
    assert cpu_threads.share_cores(config(world=2)) == 4 and torch.get_num_threads() == 4
    torch.set_num_threads(8)
    assert cpu_threads.share_cores(config(world=3, method="tcp://localhost:29500")) == 2
    torch.set_num_threads(8)
    assert cpu_threads.share_cores(config(world=16)) == 1  # never below one thread
    torch.set_num_threads(8)
    machine.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's count wins over the init method
    assert cpu_threads.share_cores(config(world=8, method="env://")) == 2


@pytest.mark.parametrize("case", ["one process", "OMP_NUM_THREADS set", "other hosts", "GPU run"])
def test_left_alone_where_the_share_is_unknown_or_chosen(machine, case):
    cfg = config()
    if case == "one process":
        cfg = config(world=1)
    elif case == "OMP_NUM_THREADS set":
        machine.setenv("OMP_NUM_THREADS", "8")
    elif case == "other hosts":  # ranks on several machines: how many run here is not known
        cfg = config(world=4, method="tcp://10.0.0.5:29500")
    else:
        machine.setattr(torch.cuda, "is_available", lambda: True)
        cfg = config(cpu=False)
    assert cpu_threads.share_cores(cfg) is None and torch.get_num_threads() == 8
