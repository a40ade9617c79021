import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Under pytest-xdist the workers already share the cores: one torch (OpenMP) thread per worker per core, set before
# anything imports torch and inherited by the `slowfast` subprocesses the tests start. With torch's default (a thread
# per core) in each of 2 workers and their subprocesses, the threads spin-wait on each other: on 2 cores
# tests/test_siglip.py took 50% more CPU time, and as much more wall time, beside other work. A value already set
# wins; a run without xdist keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

# PyAV must load its FFmpeg before decord does: decord loads its own FFmpeg 4.1 with RTLD_GLOBAL, and PyAV's
# VP9 encoder then fails to open ("avcodec_open2(libvpx-vp9) returned 22").
import media  # noqa: E402

# --- pytest-xdist: which tests share a worker, and in what order the work is handed out ---------------------------
# `python -m pytest` runs with `-n 2 --dist loadfile --no-loadscope-reorder` (pyproject.toml): a module's tests stay
# on one worker, so that its module-scoped fixtures (a Ray cluster, an encoded corpus, built models) are made once, as
# in a run without xdist. Two modules are cut in independent parts (SPLIT: tests that share no module fixture with the
# rest of their module, or only the Ray cluster, which each part then starts for itself), so that the two longest
# streams of work (the Ray runs) go to both workers at once. ORDER hands the longest parts out first, so that the
# short modules fill the other worker's time instead of the last minutes.
SPLIT = {
    "test_ray.py": {  # TestSameAsLocal and TestResume share the `both` fixture: they stay in the module's own part
        "test_dead_workers_are_retried_a_bounded_number_of_times": "ray:faults",
        "test_more_encoders_than_the_cluster_can_hold_is_refused_up_front": "ray:faults",
        "test_ctrl_c_leaves_files_and_lines_together_and_resumes": "ray:faults",
        "test_the_plan_is_read_in_blocks_by_one_actor_operator": "ray:faults",
        "test_a_stall_is_named_and_stops_the_run_with_stall_timeout": "ray:faults",
        "test_two_node_cluster_through_ray_job_submit": "ray:two-node",  # its own cluster
    },
    "test_batch.py": {  # real signals to real batches, on the module's `ten_clips` and `twelve`
        "test_killed_batch_resumes_to_the_same_result": "batch:signals",
        "test_sigint_at_any_moment_exits_130_and_leaves_only_complete_files": "batch:signals",
    },
}
ORDER = ["test_ray.py", "ray:faults", "ray:two-node", "batch:signals", "test_batch.py", "test_gpu_check.py",
         "test_checkpoints.py", "test_siglip.py", "test_llava_models.py", "test_internvl.py", "test_qwen_models.py",
         "test_encoder.py",
         "test_pipeline.py"]  # fmt: skip


def work_unit(nodeid: str) -> str:
    """The part of the suite (a module, or a SPLIT part of one) that ``nodeid`` runs in."""
    path, _, rest = nodeid.partition("::")
    module = path.rpartition("/")[2]
    name = rest.partition("::")[0].partition("[")[0]
    return SPLIT.get(module, {}).get(name, module)


# The developer subset, `python -m pytest -q -m "not slow"`, leaves out these: real Ray clusters, real signals to real
# batches, other subprocess runs of several seconds, the full-size towers (module, SPLIT part, or test name).
SLOW = {
    "test_ray.py", "ray:faults", "ray:two-node", "batch:signals", "test_gpu_check.py",
    "test_batch.py::test_progress_bar_on_a_terminal",
    "test_readme.py::test_bash_blocks_run",  # every command the README shows, each in its own process
    "test_batch.py::test_unreadable_folder_is_reported_not_fatal",
    "test_batch.py::TestResumeKeepsNothingWrong::test_two_real_batches_at_once",
    "test_batch.py::TestResumeKeepsNothingWrong::test_a_second_run_into_the_same_folder_is_refused_and_deletes_nothing",
    "test_batch.py::TestHostile::test_sigterm_stops_like_ctrl_c",
    "test_checkpoints.py::TestViTL14At336",
    "test_packing.py::TestSameBitsAsAlone::test_a_real_tower_viT_b_32_fp32_and_bf16",
    "test_llava_models.py::TestSO400MAt384",
    "test_qwen_models.py::test_without_transformers_one_line",  # a subprocess that imports the whole CLI
    "test_siglip.py::TestAgainstTransformers",
    "test_siglip.py::TestTower",
    "test_encoder.py::TestPretrainedTags::test_a_hub_that_never_answers_fails_within_seconds",
    "test_encoder.py::TestPretrainedTags::test_no_access_to_the_hub_fails_within_seconds",
    "test_encoder.py::TestPreprocess::test_extreme_aspect_ratio_chunk_has_bounded_peak_memory",
    "test_remote.py::test_a_stopped_run_leaves_only_whole_objects_and_resumes",  # real signals, subprocess batches
    "test_remote.py::test_the_ray_engine_reads_a_bucket",  # a Ray cluster
}  # fmt: skip


def is_slow(nodeid: str) -> bool:
    module_and_name = nodeid.rpartition("/")[2].partition("[")[0]
    return work_unit(nodeid) in SLOW or any(
        module_and_name == slow or module_and_name.startswith(slow + "::") for slow in SLOW
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
    rank = {unit: i for i, unit in enumerate(ORDER)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))  # stable: each part keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the SPLIT parts as files of their own; any other --dist is xdist's."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Parts(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return Parts(config, log)


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    """32 frames, 96x64, 10 fps h264 mp4 whose frames encode their index (see ``media.read_index``)."""
    return media.make_video(tmp_path_factory.mktemp("videos") / "small.mp4")


@pytest.fixture
def small_disk(tmp_path):
    """A factory of small tmpfs file systems mounted under ``tmp_path`` (a full disk, for real): needs the right
    to mount (root in this project's CI); skipped with the reason elsewhere. Unmounted at the end."""
    import subprocess

    mounted = []

    def mount(size: str, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
