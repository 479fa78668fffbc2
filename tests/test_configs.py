"""Tuned-config lookup (runtime.configs): nearest key, exact bool/string fields, folder order,
measured over model, corrupt and missing files, in-memory caching, the folder variable read once,
the tuner's override hooks, and the per-shape caches of the host APIs (ShapeCache)."""

import json
import logging
import pathlib

import pytest

from vllm_ascend_triton.runtime import configs

SKU = "Ascend910B3"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    # No user folder from the environment, an empty shipped folder, no cached tables or warnings.
    monkeypatch.delenv(configs.TUNED_CONFIG_FOLDER_ENV, raising=False)
    monkeypatch.setattr(configs, "PACKAGED_CONFIG_DIR", tmp_path / "shipped")
    configs.clear_caches()
    yield
    configs.clear_caches()


def _use(monkeypatch, folder):
    """Point VAT_TUNED_CONFIG_FOLDER at `folder`; the variable is read once, so clear the caches."""
    monkeypatch.setenv(configs.TUNED_CONFIG_FOLDER_ENV, str(folder))
    configs.clear_caches()


def _write_single(root, kernel, entries, method="model", sku=SKU, name="default"):
    """One shape file `<root>/<SKU>/<kernel>/<name>.json` holding `entries`."""
    path = root / sku / kernel / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kernel": kernel, "sku": sku, "method": method, "configs": entries}))
    return path


def _write_shape(root, kernel, shape_key, entries, method="model", sku=SKU):
    """The per-(kernel, shape key) layout that `vat tune` writes."""
    path = configs.config_file_path(root, sku, kernel, shape_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": 2,
        "kernel": kernel,
        "sku": sku,
        "method": method,
        "shape_key": shape_key,
        "configs": entries,
    }
    path.write_text(json.dumps(doc))
    return path


def test_default_when_no_file(tmp_path, monkeypatch):
    _use(monkeypatch, tmp_path)
    default = {"BLOCK": 64}
    got = configs.lookup_config(SKU, "no_such_kernel", {"n": 8}, default)
    assert got == default and got is not default  # a copy: callers may not mutate the default


def test_nearest_key_by_log_distance(tmp_path, monkeypatch):
    _write_single(
        tmp_path,
        "k_test",
        [
            {"key": {"head_size": 128, "tokens": 16}, "config": {"BLOCK": 16}},
            {"key": {"head_size": 128, "tokens": 4096}, "config": {"BLOCK": 256}},
            {"key": {"head_size": 64, "tokens": 4096}, "config": {"BLOCK": 512}},
        ],
    )
    _use(monkeypatch, tmp_path)
    default = {"BLOCK": 1, "MULTIBUFFER": True}
    got = configs.lookup_config(SKU, "k_test", {"head_size": 128, "tokens": 2048}, default)
    assert got == {"BLOCK": 256, "MULTIBUFFER": True}
    assert configs.lookup_config(SKU, "k_test", {"head_size": 128, "tokens": 20}, default)["BLOCK"] == 16
    assert configs.lookup_config(SKU, "k_test", {"head_size": 64, "tokens": 3000}, default)["BLOCK"] == 512
    # 200 tokens: 3.6 octaves from 16, 4.4 from 4096.
    assert configs.lookup_config(SKU, "k_test", {"head_size": 128, "tokens": 200}, default)["BLOCK"] == 16
    # Another SKU has no file: default.
    assert (
        configs.lookup_config("Ascend910B4", "k_test", {"head_size": 64, "tokens": 3000}, default) == default
    )


def test_strings_and_bools_must_match_exactly(tmp_path, monkeypatch):
    _write_single(
        tmp_path,
        "k_exact",
        [
            {"key": {"dtype": "fp16", "decode": True, "n": 8}, "config": {"BLOCK": 8}},
            {"key": {"dtype": "fp16", "decode": False, "n": 8}, "config": {"BLOCK": 32}},
        ],
    )
    _use(monkeypatch, tmp_path)
    look = lambda key: configs.lookup_config(SKU, "k_exact", key, {"BLOCK": 1})["BLOCK"]  # noqa: E731
    assert look({"dtype": "fp32", "decode": True, "n": 8}) == 1  # no string match: default
    assert look({"dtype": "fp16", "decode": True, "n": 4096}) == 8  # far, but the only decode entry
    assert look({"dtype": "fp16", "decode": False, "n": 1}) == 32
    assert look({"dtype": "fp16", "decode": 1, "n": 8}) == 1  # 1 is not True
    assert look({"dtype": "fp16", "n": 8}) == 1  # a missing field never matches


def test_shape_files_user_folder_first(tmp_path, monkeypatch):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    key = {"head_size": 128, "num_tokens": 64}
    _write_shape(
        shipped, "k_fold", {"head_size": 128}, [{"key": key, "config": {"BLOCK": 1}}], method="measured"
    )
    _write_shape(user, "k_fold", {"head_size": 128}, [{"key": key, "config": {"BLOCK": 2}}])
    look = lambda: configs.lookup_config(SKU, "k_fold", key, {"BLOCK": 0})["BLOCK"]  # noqa: E731
    assert look() == 1  # shipped only
    _use(monkeypatch, user)
    assert look() == 2  # the user's folder first, even over a measured shipped entry
    assert configs.config_folders() == (user, shipped)


def test_folder_variable_read_once(tmp_path, monkeypatch):
    user = tmp_path / "user"
    key = {"n": 4}
    _write_shape(user, "k_once", {}, [{"key": key, "config": {"BLOCK": 2}}])
    look = lambda: configs.lookup_config(SKU, "k_once", key, {"BLOCK": 0})["BLOCK"]  # noqa: E731
    assert look() == 0
    monkeypatch.setenv(configs.TUNED_CONFIG_FOLDER_ENV, str(user))
    assert look() == 0  # not re-read per lookup
    configs.clear_caches()
    assert look() == 2


def test_legacy_layout_and_variable_are_gone(tmp_path, monkeypatch):
    key = {"n": 4}
    doc = {
        "kernel": "k_old",
        "sku": SKU,
        "method": "model",
        "configs": [{"key": key, "config": {"BLOCK": 3}}],
    }
    (tmp_path / SKU).mkdir(parents=True)
    (tmp_path / SKU / "k_old.json").write_text(json.dumps(doc))  # the former single-file layout
    monkeypatch.setenv("VAT_CONFIG_DIR", str(tmp_path))  # the former variable
    configs.clear_caches()
    assert configs.lookup_config(SKU, "k_old", key, {"BLOCK": 0})["BLOCK"] == 0
    _use(monkeypatch, tmp_path)
    assert configs.lookup_config(SKU, "k_old", key, {"BLOCK": 0})["BLOCK"] == 0
    assert not hasattr(configs, "LEGACY_CONFIG_DIR_ENV") and not hasattr(configs, "config_path")


def test_old_method_spellings_are_corrupt(tmp_path, monkeypatch, caplog):
    key = {"n": 4}
    path = _write_single(tmp_path, "k_src", [{"key": key, "config": {"BLOCK": 3}}], method="modelled")
    doc = json.loads(path.read_text())
    _write_single(tmp_path, "k_src2", [{"key": key, "config": {"BLOCK": 3}}])
    doc2 = {k: v for k, v in json.loads((tmp_path / SKU / "k_src2" / "default.json").read_text()).items()}
    doc2.pop("method")
    doc2["source"] = "measured"  # ignored: no alias of "method"
    (tmp_path / SKU / "k_src2" / "default.json").write_text(json.dumps(doc2))
    _use(monkeypatch, tmp_path)
    with caplog.at_level(logging.WARNING, logger=configs.__name__):
        assert configs.lookup_config(SKU, "k_src", key, {"BLOCK": 0})["BLOCK"] == 0
    assert any(str(path) in r.getMessage() and "modelled" in r.getMessage() for r in caplog.records)
    assert doc["method"] == "modelled"
    assert configs.find_entry(SKU, "k_src2", key).method == "model"


def test_dtype_key_has_one_spelling():
    import torch

    assert configs.dtype_key(torch.float16) == "float16" == configs.dtype_key("float16")
    assert configs.dtype_key(torch.bfloat16) == "bfloat16"


def test_shipped_configs_spell_dtypes_without_torch_prefix():
    shipped = pathlib.Path(configs.__file__).parent / "tuned_configs"
    texts = [p.read_text() for p in shipped.rglob("*.json")]
    assert texts and not any('"torch.' in t for t in texts)


def test_shape_cache_bypassed_by_tuner_hooks_and_cleared():
    from vllm_ascend_triton.runtime.device import plan_for

    cache = configs.ShapeCache("test_cache", maxsize=2)
    assert cache.put("a", 1) == 1 and cache.get("a") == 1
    with configs.override_configs({}):
        assert cache.get("a") is None
        cache.put("b", 2)
    with configs.record_lookups():
        assert cache.get("a") is None
    with plan_for("Ascend910B4"):
        assert cache.get("a") is None
    assert cache.get("b") is None  # nothing kept while bypassed
    cache.put("b", 2)
    cache.put("c", 3)  # full: starts over
    assert (cache.get("a"), cache.get("c"), len(cache)) == (None, 3, 1)
    configs.clear_caches()
    assert len(cache) == 0


def test_measured_beats_model_at_equal_distance(tmp_path, monkeypatch):
    key = {"n": 64}
    _write_shape(tmp_path, "k_meth", {}, [{"key": key, "config": {"BLOCK": 1}}], method="model")
    _write_single(tmp_path, "k_meth", [{"key": key, "config": {"BLOCK": 2}}], method="measured", name="m")
    _use(monkeypatch, tmp_path)
    assert configs.lookup_config(SKU, "k_meth", key, {"BLOCK": 0})["BLOCK"] == 2
    assert configs.find_entry(SKU, "k_meth", key).method == "measured"
    # ...but a nearer modelled entry wins over a farther measured one.
    _write_shape(tmp_path, "k_near", {}, [{"key": {"n": 64}, "config": {"BLOCK": 1}}], method="model")
    _write_single(
        tmp_path, "k_near", [{"key": {"n": 128}, "config": {"BLOCK": 2}}], method="measured", name="m"
    )
    assert configs.lookup_config(SKU, "k_near", key, {"BLOCK": 0})["BLOCK"] == 1


def test_corrupt_file_reported_and_skipped(tmp_path, monkeypatch, caplog):
    good = _write_shape(tmp_path, "k_bad", {"a": 1}, [{"key": {"a": 1, "n": 4}, "config": {"BLOCK": 4}}])
    bad = good.parent / "a=2.json"
    bad.write_text('{"kernel": "k_bad", "configs": [')  # cut short
    missing_field = good.parent / "a=3.json"
    missing_field.write_text(json.dumps({"kernel": "k_bad"}))
    _use(monkeypatch, tmp_path)
    with caplog.at_level(logging.WARNING, logger=configs.__name__):
        for _ in range(3):
            assert configs.lookup_config(SKU, "k_bad", {"a": 1, "n": 4}, {"BLOCK": 1})["BLOCK"] == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum(str(bad) in m for m in messages) == 1  # reported once, naming the file
    assert sum(str(missing_field) in m and "'configs'" in m for m in messages) == 1


def test_no_match_warns_once_per_sku_and_kernel(tmp_path, monkeypatch, caplog):
    _write_single(tmp_path, "k_one", [{"key": {"n": 1}, "config": {"BLOCK": 4}}])
    _use(monkeypatch, tmp_path)
    with caplog.at_level(logging.WARNING, logger=configs.__name__):
        for kernel in ("k_one", "k_two", "k_two", "k_one"):
            configs.lookup_config(SKU, kernel, {"dtype": "x"}, {"BLOCK": 1})
    assert [r.getMessage() for r in caplog.records] == [
        f"no tuned config matches k_one on {SKU}; using the kernel's default config",
        f"no tuned config matches k_two on {SKU}; using the kernel's default config",
    ]


def test_untuned_sku_warns_once_not_per_kernel(tmp_path, monkeypatch, caplog):
    _use(monkeypatch, tmp_path)
    with caplog.at_level("WARNING", logger=configs.__name__):
        for kernel in ("k_a", "k_b", "k_c"):
            configs.lookup_config("Ascend910B2", kernel, {"n": 1}, {"BLOCK": 1})
    assert [r.getMessage() for r in caplog.records] == [
        "no tuned configs for Ascend910B2; kernels use their default configs (sized for its UB)"
    ]


def test_files_read_once_then_memory_only(tmp_path, monkeypatch):
    _write_single(tmp_path, "k_mem", [{"key": {"n": 8}, "config": {"BLOCK": 8}}])
    _use(monkeypatch, tmp_path)
    assert configs.lookup_config(SKU, "k_mem", {"n": 8}, {"BLOCK": 1})["BLOCK"] == 8
    assert configs.lookup_config(SKU, "k_none", {"n": 8}, {"BLOCK": 1})["BLOCK"] == 1

    def no_fs(*args, **kwargs):
        raise AssertionError("file-system call during a lookup")

    for name in ("is_file", "is_dir", "read_text", "glob", "exists", "stat"):
        monkeypatch.setattr(pathlib.Path, name, no_fs)
    for n in (8, 9, 100, 8):  # new keys too: only distances over the entries in memory
        assert configs.lookup_config(SKU, "k_mem", {"n": n}, {"BLOCK": 1})["BLOCK"] == 8
    assert configs.lookup_config(SKU, "k_none", {"n": 8}, {"BLOCK": 1})["BLOCK"] == 1


def test_override_and_record_lookups(tmp_path, monkeypatch):
    _write_single(tmp_path, "k_ovr", [{"key": {"n": 8}, "config": {"BLOCK": 8}}])
    _write_single(tmp_path, "k_other", [{"key": {"n": 8}, "config": {"BLOCK": 16}}])
    _use(monkeypatch, tmp_path)
    with configs.record_lookups() as seen:
        with configs.override_configs({"k_ovr": {"BLOCK": 2}}):
            assert configs.lookup_config(SKU, "k_ovr", {"n": 8}, {"BLOCK": 1, "X": 3}) == {"BLOCK": 2, "X": 3}
            assert configs.lookup_config(SKU, "k_other", {"n": 8}, {"BLOCK": 1})["BLOCK"] == 16
        with configs.override_configs({}, ignore_files=True):
            assert configs.lookup_config(SKU, "k_other", {"n": 8}, {"BLOCK": 1})["BLOCK"] == 1
        assert configs.lookup_config(SKU, "k_ovr", {"n": 8}, {"BLOCK": 1})["BLOCK"] == 8
    assert [(r.kernel, r.source.split(":")[0]) for r in seen] == [
        ("k_ovr", "override"),
        ("k_other", "model"),
        ("k_other", "default"),
        ("k_ovr", "model"),
    ]
    with pytest.raises(TypeError, match="k_ovr"):
        with configs.override_configs({"k_ovr": 3}):
            pass
