"""--workers N on a GPU machine: the environment each local worker starts with."""

from cxr_tuner.search.distributed import local, pinning


def test_each_worker_gets_its_own_gpu_while_there_are_enough():
    envs = [pinning.worker_environment(i, 4, ["0", "1", "2", "3"], {"PATH": "/bin"}) for i in range(4)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "1", "2", "3"]
    assert all("TF_FORCE_GPU_ALLOW_GROWTH" not in env and env["PATH"] == "/bin" for env in envs)


def test_more_workers_than_gpus_share_them_with_memory_growth():
    envs = [pinning.worker_environment(i, 3, ["4", "6"], {}) for i in range(3)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["4", "6", "4"]
    assert all(env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for env in envs)


def test_mirrored_workers_keep_every_gpu_and_cpu_machines_are_left_alone():
    env = pinning.worker_environment(1, 2, ["0", "1"], {}, strategy="mirrored")
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert pinning.worker_environment(0, 2, [], {"A": "1"}) == {"A": "1"}


def test_visible_gpus_follow_the_parents_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert pinning.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert pinning.visible_gpus() == []


def test_local_workers_start_with_their_pinned_environment(tmp_path, monkeypatch):
    started, lines = [], []

    class FakeProcess:
        returncode = 0

        def __init__(self, command, env, **kwargs):
            started.append((command[command.index("--worker-id") + 1], env))

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(pinning, "share_gpus_with_workers", lambda: None)
    monkeypatch.setattr(local.subprocess, "Popen", FakeProcess)
    with local.local_workers(tmp_path, 3, lines.append):
        pass
    assert [(name, env["CUDA_VISIBLE_DEVICES"]) for name, env in started] == \
        [("local-1", "0"), ("local-2", "1"), ("local-3", "0")]
    assert all(env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for _, env in started)
    assert "worker local-3: GPU 0 (shared, memory growth)" in lines
