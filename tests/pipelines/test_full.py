"""The whole pipeline against a real MLflow server on 127.0.0.1: runs, metrics and artifacts land there,
summary.json is written, and a rerun is all cached without new stage runs. A slow test renders two pages of
the MLflow UI with headless Chromium (Debian's `chromium`; skipped with that reason when it is missing): the
train run's metric charts (loss and val mAP curves) and the evaluate run's artifacts with its PR curves
selected. YOLOV2_SCREENSHOT_OUT=docs (a folder) keeps them as docs/mlflow-train.png and
docs/mlflow-evaluate.png, the pictures the README shows."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import full, ray_runtime
from pipelines.config import PipelineConfig
from pipelines.dag import StageResult, StageSpec
from pipelines.faults import NO_FAULTS
from pipelines.stages import STAGE_NAMES, STAGES
from pipelines.workspace import Workspace
from test_cluster_scripts import _start_mlflow, free_port, stop_session, wait_http
from tiny_pipeline import TINY, set_args
from yolov2.errors import DatasetError

DEFAULT_STAGES = tuple(spec.name for spec in STAGES if spec.runs_by_default(PipelineConfig()))  # all but tune


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}", timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def mlflow_server(root) -> Iterator[str]:
    """A real `mlflow server` (cluster/mlflow_server.sh) on a free 127.0.0.1 port; yields its base URL."""
    port = free_port()
    server = _start_mlflow(root, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", server, timeout=120)
        # the server logs every request to its stdout pipe: read it (the last lines kept), or the server blocks
        # on a full pipe (64 KiB, a few hundred requests: a pipeline run and a few UI pages)
        log: deque[str] = deque(maxlen=200)
        threading.Thread(target=log.extend, args=(server.stdout,), daemon=True).start()
        yield base
    finally:
        stop_session(server)


def run_tiny_pipeline(tmp_path, base: str, experiment: str, extra: Sequence[str] = ()) -> tuple[list[str], dict]:
    """full.py at tiny size (plus the ``extra`` overrides) against the server: its arguments (for a rerun) and the
    summary it wrote."""
    args = [
        "--config",
        "configs/demo.yaml",
        "--workspace",
        str(tmp_path / "ws"),
        "--set",
        f"mlflow.tracking_uri={base}",
        "--set",
        f"mlflow.experiment={experiment}",
        *set_args([*TINY, *extra]),
    ]
    assert full.main(args) == 0
    return args, json.loads((tmp_path / "ws" / "summary.json").read_text())


def test_pipeline_logs_to_a_real_mlflow_server_and_reruns_cached(ray_local, tmp_path):
    with mlflow_server(tmp_path) as base:
        args, summary = run_tiny_pipeline(tmp_path, base, "full-test")
        assert [summary["stages"][s]["status"] for s in DEFAULT_STAGES] == ["done"] * 5
        assert "map50_voc07" in summary["metrics"] and 0.0 <= summary["metrics"]["map50_voc07"] <= 1.0

        experiment = _get(base, "experiments/get-by-name?experiment_name=full-test")["experiment"]
        runs = _post(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        parent_id = summary["mlflow_parent_run_id"]
        assert set(by_name) == {"pipeline", *DEFAULT_STAGES}
        for stage in DEFAULT_STAGES:
            tags = {t["key"]: t["value"] for t in by_name[stage]["data"].get("tags", [])}
            assert tags["mlflow.parentRunId"] == parent_id
        metrics = {m["key"] for m in by_name["train"]["data"]["metrics"]}
        assert {"loss_total", "lr", "map50_voc07"} <= metrics
        evaluate_metrics = {m["key"]: m["value"] for m in by_name["evaluate"]["data"]["metrics"]}
        assert abs(evaluate_metrics["map50_voc07"] - summary["metrics"]["map50_voc07"]) < 1e-9
        artifacts = _get(base, f"artifacts/list?run_id={by_name['evaluate']['info']['run_id']}")
        assert "metrics.json" in {f["path"] for f in artifacts.get("files", [])}
        anchor_files = _get(base, f"artifacts/list?run_id={by_name['anchors']['info']['run_id']}")
        assert "anchors.png" in {f["path"] for f in anchor_files.get("files", [])}

        assert full.main(args) == 0  # the rerun: every stage cached, no new stage runs
        summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
        assert [summary["stages"][s]["status"] for s in DEFAULT_STAGES] == ["cached"] * 5
        runs = _post(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        names = sorted(r["info"]["run_name"] for r in runs)
        assert names == sorted(["pipeline", "pipeline", *DEFAULT_STAGES])
        rerun_parent = next(r for r in runs if r["info"]["run_id"] == summary["mlflow_parent_run_id"])
        tags = {t["key"]: t["value"] for t in rerun_parent["data"].get("tags", [])}
        assert tags["stage.train.cached_run_id"] == by_name["train"]["info"]["run_id"]


def test_stage_flags_on_the_command_line_come_from_the_stage_specs():
    declared = {flag.name: flag for spec in STAGES for flag in spec.flags}
    assert declared["resume"].keeps_partial_output  # train's --resume
    assert {name: flag for name, (flag, _) in full.registry_flags().items()} == declared
    help_text = full.build_parser().format_help()
    for flag in declared.values():
        assert flag.option in help_text
    args = full.build_parser().parse_args(["--resume"])
    assert args.resume is True and full.build_parser().parse_args([]).resume is False


def test_each_stage_gets_only_the_flags_it_declares(tmp_path, monkeypatch):
    calls = {}

    def fake_run_stage(spec, cfg, workspace, **kwargs):
        calls[spec.name] = kwargs["flags"]
        return StageResult(spec.name, "0" * 16, f"{spec.name}/x", {}, cached=False, seconds=0.0, run_id=None)

    monkeypatch.setattr(full, "run_stage", fake_run_stage)
    ws = Workspace.open(tmp_path / "ws")
    invocation = full.Invocation(
        PipelineConfig(), ws, STAGE_NAMES, frozenset(), {"resume": True}, tracking_enabled=False, faults=NO_FAULTS
    )
    summary: dict = {"stages": {}}
    assert full.run_selected(invocation, summary, {}) == 0
    assert calls == {
        "prepare": {},
        "shard": {},
        "anchors": {},
        "pretrain": {"resume": True},
        "tune": {},
        "train": {"resume": True},
        "evaluate": {},
    }
    assert list(summary["stages"]) == list(STAGE_NAMES)


def test_a_selected_stage_without_its_upstream_exits_2_and_still_writes_the_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ray_runtime, "connect", lambda *args, **kwargs: None)
    code = full.main(
        ["--config", "configs/demo.yaml", "--workspace", str(tmp_path / "ws"), "--no-mlflow", "--stages", "anchors"]
    )
    assert code == 2
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert summary["stages"] == {} and summary["metrics"] == {}
    assert "=== yolov2-pipeline summary ===" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--stages: unknown stage.s. anchor; stages are prepare, shard, anchors"):
        full.main(["--stages", "anchor"])


def _two_stage_chain(monkeypatch, fail: bool) -> None:
    """full.py's registry replaced by two stages without Ray: ``first``, then ``second``, which raises (as
    anchors does on an empty shard output) when ``fail``."""

    def second(ctx):
        if fail:
            raise DatasetError("train-index.parquet: no boxes to cluster")
        return {}

    first_spec = StageSpec(name="first", upstream=(), config_keys=("data",), version=1, body=lambda ctx: {})
    second_spec = StageSpec(name="second", upstream=(first_spec,), config_keys=("anchors",), version=1, body=second)
    monkeypatch.setattr(full, "STAGES", (first_spec, second_spec))
    monkeypatch.setattr(full, "STAGE_NAMES", ("first", "second"))


def test_the_pipeline_run_ends_failed_when_a_stage_failed_and_finished_when_all_ran(
    tmp_path, monkeypatch, capsys, caplog
):
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(ray_runtime, "connect", lambda *args, **kwargs: None)
    args = ["--config", "configs/demo.yaml", "--workspace", str(tmp_path / "ws"), "--set", "mlflow.experiment=chain"]

    _two_stage_chain(monkeypatch, fail=True)
    assert full.main(args) == 1
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    client = MlflowClient(summary["mlflow_tracking_uri"])
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failed_stage"] == "second"
    assert parent.data.tags["error"] == "DatasetError: train-index.parquet: no boxes to cluster"
    stage_runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name: r.info.status for r in stage_runs} == {"first": "FINISHED", "second": "FAILED"}
    assert "stage second failed: train-index.parquet: no boxes to cluster" in caplog.text
    printed = capsys.readouterr().out
    assert "failed" in printed and "DatasetError: train-index.parquet: no boxes to cluster" in printed
    assert f"MLflow experiment: {summary['mlflow_ui']}" in printed and summary["mlflow_ui"].endswith(
        f"/#/experiments/{parent.info.experiment_id}?workflowType=machine_learning"
    )

    _two_stage_chain(monkeypatch, fail=False)
    assert full.main(args) == 0
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and "failed_stage" not in parent.data.tags
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The README's pictures: the train run's loss and val mAP charts (picked with the run page's chart search box,
# which takes a regular expression) and the evaluate run's PR curves
TRAIN_CHARTS = ("coco_AP", "loss_cls", "loss_coord", "loss_obj", "loss_total", "map50_voc07")
# 10 epochs of 2 steps, and a warm-up of 4 steps rather than the demo's 100: curves, with a loss that falls
UI_TRAINING = ["train.epochs=10", "train.warmup=4"]
# MLflow 3.17's UI opens its (GenAI) assistant panel on a first visit to a server on localhost; these are the
# localStorage keys it keeps once a user has closed it
ASSISTANT_CLOSED = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


# runs a command with the pipe ends given as its fds 3 and 4 (Popen keeps fds open, but not at a chosen number)
FDS_3_AND_4 = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
)


class HeadlessChromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands in
    on fd 3, replies out on fd 4, each a JSON object ending in NUL), so that a page is set up as a user would
    have left it (its localStorage) and shot once what it waits for has drawn."""

    def __init__(self, profile: Path, width: int, height: int) -> None:
        commands_in, self._commands = os.pipe()
        self._replies, replies_out = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-quic",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            # a mouse, not a touch screen: Plotly shows its chart toolbars on hover only, as on a desktop
            "--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        with open(f"{profile}.log", "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", FDS_3_AND_4, str(commands_in), str(replies_out), CHROMIUM, *flags],
                pass_fds=(commands_in, replies_out),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        os.close(commands_in)
        os.close(replies_out)
        self._buffer, self._last_id, self._session = b"", 0, None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, timeout: float = 60, **params) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:  # events come in between; the reply is the message with this id
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                    raise TimeoutError(f"chromium: no reply to {method} within {timeout}s")
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise ConnectionError(f"chromium exited before replying to {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"not within {timeout}s: {expression}"
            time.sleep(0.5)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout=60)

    def shoot(self, base: str, url: str, local_storage: dict[str, str], ready: str, shot: Path) -> None:
        """``url`` with ``local_storage`` set in the server's origin, shot to ``shot`` once ``ready`` holds."""
        self.goto(f"{base}/health")
        self.evaluate(
            ";".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})" for k, v in local_storage.items())
        )
        self.goto(url)
        self.wait_for(ready, timeout=120)
        time.sleep(2)  # the charts' and images' last layout
        shot.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        os.close(self._commands)
        os.close(self._replies)


@contextlib.contextmanager
def headless_chromium(profile: Path, width: int, height: int) -> Iterator[HeadlessChromium]:
    browser = HeadlessChromium(profile, width, height)
    try:
        yield browser
    finally:
        browser.close()


def render_train_and_evaluate(base: str, experiment_id: str, train_id: str, evaluate_id: str, out: Path) -> dict:
    """The train run's metric charts and the evaluate run's PR curves in the MLflow UI, as PNGs in ``out``;
    returns, per picture, its path and what the page showed (for the test to check)."""
    run_page = f"{base}/#/experiments/{experiment_id}/runs"
    chart_state = {  # the run page's own chart settings, with the search box filled in as a user would
        "isAccordionReordered": False,
        "autoRefreshEnabled": False,
        "chartsSearchFilter": f"^({'|'.join(TRAIN_CHARTS)})$",
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    plots = "[...document.querySelectorAll('.js-plotly-plot')]"
    drawn = f"{plots}.length === {len(TRAIN_CHARTS)} && {plots}.every(p => p.querySelector('path.js-line'))"
    pages = {
        "train": (
            f"{run_page}/{train_id}/model-metrics?workflowType=machine_learning",
            {
                **ASSISTANT_CLOSED,
                f"MLflowLocalStorage-1.1-RunPage-{train_id}-model-chartUIState": json.dumps(chart_state),
            },
            drawn,
            (1400, 1000),
        ),
        "evaluate": (
            f"{run_page}/{evaluate_id}/artifacts/pr_curves.png?workflowType=machine_learning",
            ASSISTANT_CLOSED,
            "[...document.images].some(i => i.complete && i.naturalWidth > 0)",
            (1400, 440),
        ),
    }
    shown = {}
    for name, (url, local_storage, ready, (width, height)) in pages.items():
        shot = out / f"mlflow-{name}.png"
        with headless_chromium(out / f"chrome-{name}", width, height) as browser:
            browser.shoot(base, url, local_storage, ready, shot)
            shown[name] = {
                "png": shot,
                "url": url,
                "size": (width, height),
                "text": browser.evaluate("document.body.innerText"),
                "search": browser.evaluate("document.querySelector('input[role=searchbox]')?.value ?? null"),
                "charts": browser.evaluate(f"{plots}.length"),
                "assistant_panel": browser.evaluate(
                    "document.querySelector('[data-component-id^=\"mlflow.assistant.chat_panel\"]') !== null"
                ),
            }
    return shown


def keep_small(shot: Path, dest: Path, limit: int = 300_000) -> None:
    """``shot`` copied to ``dest``; in a 256-colour palette where that is needed to stay under ``limit`` bytes
    (a UI screenshot has few colours)."""
    shutil.copy(shot, dest)
    if dest.stat().st_size > limit:
        Image.open(shot).convert("RGB").quantize(256).save(dest, optimize=True)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_mlflow_ui_shows_the_train_curves_and_the_evaluate_figures(ray_local, tmp_path):
    with mlflow_server(tmp_path) as base:
        _, summary = run_tiny_pipeline(tmp_path, base, "ui-test", UI_TRAINING)
        experiment_id = _get(base, "experiments/get-by-name?experiment_name=ui-test")["experiment"]["experiment_id"]
        train_id, evaluate_id = (summary["stages"][s]["mlflow_run_id"] for s in ("train", "evaluate"))
        train_metrics = {m["key"] for m in _get(base, f"runs/get?run_id={train_id}")["run"]["data"]["metrics"]}
        assert set(TRAIN_CHARTS) <= train_metrics
        artifacts = {f["path"] for f in _get(base, f"artifacts/list?run_id={evaluate_id}").get("files", [])}
        assert {"pr_curves.png", "sample_detections.png"} <= artifacts
        shown = render_train_and_evaluate(base, experiment_id, train_id, evaluate_id, tmp_path)

    train, evaluate = shown["train"], shown["evaluate"]
    assert train["search"] == f"^({'|'.join(TRAIN_CHARTS)})$"  # the UI read the chart settings it was given
    lines = train["text"].split("\n")
    assert train["charts"] == len(TRAIN_CHARTS) and {"train", *TRAIN_CHARTS} <= set(lines)
    assert {"evaluate", "pr_curves.png", "sample_detections.png"} <= set(evaluate["text"].split("\n"))
    assert not any(page["assistant_panel"] for page in shown.values())
    pixels = {}
    for name, page in shown.items():
        pixels[name] = np.asarray(Image.open(page["png"]).convert("L"), np.float32)
        assert pixels[name].shape == page["size"][::-1]
        assert pixels[name].std() > 10  # a rendered page, not a blank one
    height = min(p.shape[0] for p in pixels.values())
    changed = np.abs(pixels["train"][:height] - pixels["evaluate"][:height]) > 40
    assert changed.mean() > 0.02  # two pages, not one twice (the side bar and the run header are alike)
    if os.environ.get("YOLOV2_SCREENSHOT_OUT"):
        out = Path(os.environ["YOLOV2_SCREENSHOT_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        for page in shown.values():
            keep_small(page["png"], out / page["png"].name)


RACCOON_REDUCED = [
    "train.epochs=10",
    "train.val_every=5",
    "train.register_name=null",
    "evaluate.num_sample_images=2",
]


@pytest.mark.slow  # about 4 minutes on 2 cores: Ray, 10 epochs of 136 photos, evaluation of 40
def test_the_raccoon_recipe_runs_end_to_end_on_a_reduced_budget(ray_local, shared_data, tmp_path):
    """configs/raccoon.yaml as a user runs it (class names auto, val carved out of train, best.pt on val),
    cut to 10 epochs; its metrics are read back from summary.json."""
    from mlflow.tracking import MlflowClient

    workspace = tmp_path / "ws"
    args = ["--config", "configs/raccoon.yaml", "--workspace", str(workspace)]
    args += set_args([f"data.root={shared_data / 'raccoon'}", *RACCOON_REDUCED])
    assert full.main(args) == 0
    summary = json.loads((workspace / "summary.json").read_text())
    assert [summary["stages"][s]["status"] for s in DEFAULT_STAGES] == ["done"] * 5

    shard = json.loads(next((workspace / "shard").glob("*/manifest.json")).read_text())
    assert shard["class_names"] == ["raccoon"] and shard["class_names_source"] == "annotations"
    splits = shard["splits"]
    assert splits["val"]["carved_from"] == "train" and splits["val"]["images"] == 24  # 15% of 160
    assert splits["train"]["images"] == 136 and splits["test"]["images"] == 40
    client = MlflowClient(summary["mlflow_tracking_uri"])
    shard_run = summary["stages"]["shard"]["mlflow_run_id"]
    assert client.get_run(shard_run).data.params["class_names.source"] == "annotations"
    names_file = client.download_artifacts(shard_run, "classes.names", str(tmp_path))
    assert (tmp_path / "classes.names").read_text() == "raccoon\n" and names_file.endswith("classes.names")

    with next((workspace / "train").glob("*/results.csv")).open() as results:
        epochs = list(csv.DictReader(results))
    assert [int(e["epoch"]) for e in epochs] == list(range(1, 11)) and "val_coco_ap" in epochs[0]
    assert [e["epoch"] for e in epochs if e["val_map50_voc07"]] == ["5", "10"]
    assert float(epochs[-1]["loss_total"]) < float(epochs[0]["loss_total"]) / 2, "the loss did not fall"

    evaluate = json.loads(next((workspace / "evaluate").glob("*/manifest.json")).read_text())
    assert evaluate["checkpoint"]["checkpoint"] == "best" and evaluate["checkpoint"]["epoch"] in (5, 10)
    metrics = json.loads(next((workspace / "evaluate").glob("*/metrics.json")).read_text())
    for name in ("coco_AP50", "coco_AP", "map50_voc07"):
        assert 0.0 <= summary["metrics"][name] <= 1.0
        assert summary["metrics"][name] == pytest.approx(metrics["metrics"][name], abs=1e-12)
