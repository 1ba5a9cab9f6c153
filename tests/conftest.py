"""Shared fixtures: the default model and data, 64 seeded test images, a moto S3 server."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from salaudit import load_dataset, load_model

if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes share the cores: one each,
    torch.set_num_threads(1)  # and so do the programs they start (salaudit's CLI in a
    os.environ["OMP_NUM_THREADS"] = "1"  # subprocess): OpenMP threads that outnumber the
    # cores spin against each other and run many times slower
from salaudit.inputs.selection import Selection, select_samples


@pytest.fixture(scope="session")
def model():
    return load_model("builtin:digit-scenes-cnn", progress=False)


@pytest.fixture(scope="session")
def dataset():
    return load_dataset("builtin:digit-scenes")


@pytest.fixture(scope="session")
def batch64(model, dataset):
    """64 seeded default test images, their clean predictions (the targets) and indices."""
    idx = select_samples(dataset, Selection("random", 64, seed=0))
    b = dataset.load(idx)
    with torch.no_grad():
        target = model(b.image).argmax(1)
    return b.image, target, idx


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves the environment as it found it (what it sets stays its own)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API on localhost (moto's server), as the s3fs and zarr test suites use."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh bucket on the moto server; yields its s3:// URL."""
    import s3fs

    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").strip("]-")[:50]
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(name)
    fs.invalidate_cache()
    yield f"s3://{name}"
    fs.rm(name, recursive=True)
