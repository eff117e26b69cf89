"""Training tests use one CPU thread: the tiny models gain nothing from more, and with the CPU shared by
other processes, OpenMP worker threads spinning on busy cores made these tests 10x slower."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
