"""pipelines/tune/records.py: the trial record's derived values, the trials table and the best trial."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.tune.records import TrialRecord, best_record, trials_table

NAN = math.nan


def record(index: int, metrics: list[float], status: str = "finished", **kw) -> TrialRecord:
    fields = {
        "trial_id": f"t{index:05d}",
        "index": index,
        "params": {"optim.lr": 0.001 * (index + 1), "train.batch_size": 8},
        "metric_by_epoch": metrics,
        "wall_seconds": 10.0 + index,
        "node": "10.0.0.1",
        "status": status,
        "workers": 2,
    }
    fields.update(kw)
    return TrialRecord(**fields)


def test_derived_values():
    r = record(0, [NAN, 0.2, 0.4, 0.3], status="stopped_early")
    assert r.epochs_run == 4
    assert r.best_metric == 0.4
    assert r.stopped_at_epoch == 4
    assert record(1, [0.1, 0.2]).stopped_at_epoch is None
    assert record(2, [0.1], status="failed").stopped_at_epoch is None
    assert math.isnan(record(3, [NAN, NAN]).best_metric)
    assert math.isnan(record(4, []).best_metric)
    assert record(4, []).epochs_run == 0


def test_table_columns_types_and_order():
    records = [
        record(2, [0.1, 0.3], run_id="run-2"),
        record(0, [NAN, NAN], status="stopped_early", node="", workers=0),
        record(1, [0.2], status="failed", error="RuntimeError: boom"),
    ]
    table = trials_table(records)
    schema = table.schema
    expected = {
        "trial_id": pa.string(),
        "trial_index": pa.int64(),
        "status": pa.string(),
        "epochs_run": pa.int64(),
        "best_metric": pa.float64(),
        "stopped_at_epoch": pa.int64(),
        "wall_seconds": pa.float64(),
        "node": pa.string(),
        "workers": pa.int64(),
        "error": pa.string(),
        "mlflow_run_id": pa.string(),
        "config": pa.string(),
        "metric_by_epoch": pa.list_(pa.float64()),
        "param.optim.lr": pa.float64(),
        "param.train.batch_size": pa.int64(),
    }
    assert schema.names == list(expected)
    for name, type_ in expected.items():
        assert schema.field(name).type == type_, name
    rows = table.to_pylist()
    assert [r["trial_index"] for r in rows] == [0, 1, 2]
    assert [r["trial_id"] for r in rows] == ["t00000", "t00001", "t00002"]
    assert [r["status"] for r in rows] == ["stopped_early", "failed", "finished"]
    assert [r["epochs_run"] for r in rows] == [2, 1, 2]
    assert [r["stopped_at_epoch"] for r in rows] == [2, None, None]  # only the stopped_early trial
    assert [r["best_metric"] for r in rows] == [None, 0.2, 0.3]  # all-NaN trial: null
    assert [r["metric_by_epoch"] for r in rows] == [[None, None], [0.2], [0.1, 0.3]]  # NaN kept as null
    assert [r["error"] for r in rows] == [None, "RuntimeError: boom", None]
    assert [r["mlflow_run_id"] for r in rows] == [None, None, "run-2"]
    assert [r["node"] for r in rows] == ["", "10.0.0.1", "10.0.0.1"]
    assert [r["workers"] for r in rows] == [0, 2, 2]
    assert [r["wall_seconds"] for r in rows] == [10.0, 11.0, 12.0]
    assert json.loads(rows[2]["config"]) == {"optim.lr": 0.003, "train.batch_size": 8}
    assert rows[2]["config"].index("optim.lr") < rows[2]["config"].index("train.batch_size")  # sorted keys


def test_params_union_nulls_and_list_values_as_json():
    records = [
        record(0, [0.1], params={"train.batch_size": 16, "model.anchors": [[1.0, 2.0], [3.0, 4.0]]}),
        record(1, [0.2], params={"optim.lr": 0.01, "optim.name": "adamw", "train.batch_size": 8}),
        record(2, [0.3], params={"optim.lr": 1, "train.batch_size": 4}),  # an int among floats: float64
    ]
    table = trials_table(records)
    params = [n for n in table.schema.names if n.startswith("param.")]
    assert params == ["param.model.anchors", "param.optim.lr", "param.optim.name", "param.train.batch_size"]
    assert table.schema.field("param.model.anchors").type == pa.string()
    assert table.schema.field("param.optim.lr").type == pa.float64()
    assert table.schema.field("param.optim.name").type == pa.string()
    assert table.schema.field("param.train.batch_size").type == pa.int64()
    cols = table.to_pydict()
    assert cols["param.model.anchors"] == ["[[1.0, 2.0], [3.0, 4.0]]", None, None]
    assert json.loads(cols["param.model.anchors"][0]) == [[1.0, 2.0], [3.0, 4.0]]
    assert cols["param.optim.lr"] == [None, 0.01, 1.0]
    assert cols["param.optim.name"] == [None, "adamw", None]  # strings stay as they are, not JSON-quoted
    assert cols["param.train.batch_size"] == [16, 8, 4]
    assert json.loads(cols["config"][0]) == {"model.anchors": [[1.0, 2.0], [3.0, 4.0]], "train.batch_size": 16}


def test_parquet_round_trip(tmp_path):
    records = [
        record(1, [NAN, 0.25], status="stopped_early", run_id="r1"),
        record(0, [0.1, 0.2, 0.3], params={"optim.lr": 0.002, "aug.mode": "mosaic", "anchors.k": 5}),
    ]
    table = trials_table(records)
    path = tmp_path / "trials.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.schema == table.schema
    assert back.equals(table)
    assert back.column("metric_by_epoch").to_pylist() == [[0.1, 0.2, 0.3], [None, 0.25]]


def test_empty_table_has_the_fixed_columns():
    table = trials_table([])
    assert table.num_rows == 0
    assert "param." not in "".join(table.schema.names)
    assert table.schema.field("metric_by_epoch").type == pa.list_(pa.float64())


def test_best_record_ties_failed_and_none():
    a = record(3, [0.1, 0.5])
    b = record(1, [0.5, NAN], status="stopped_early")  # same best, lower index: wins the tie
    c = record(0, [0.9], status="failed")  # higher, but failed: excluded
    d = record(2, [NAN, NAN])  # no metric: excluded
    assert best_record([a, b, c, d]) is b
    assert best_record([a, c, d]) is a
    assert best_record([c, d]) is None
    assert best_record([]) is None
    assert best_record([record(0, [0.2]), record(1, [0.3])]).index == 1


def test_numpy_scalars_in_params_are_typed_like_python_ones():
    import numpy as np

    records = [record(0, [0.1], params={"a": np.int64(3), "b": np.float64(0.5), "c": np.array([1, 2])})]
    table = trials_table(records)
    assert table.schema.field("param.a").type == pa.int64()
    assert table.schema.field("param.b").type == pa.float64()
    assert table.to_pydict()["param.c"] == ["[1, 2]"]
    assert json.loads(table.to_pydict()["config"][0]) == {"a": 3, "b": 0.5, "c": [1, 2]}
