import json

from vllm_ascend_triton.runtime import configs


def _write(root, sku, kernel, entries):
    path = configs.config_path(sku, kernel, root)
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "kernel": kernel,
                "sku": sku,
                "source": "modelled",
                "key_names": sorted(entries[0]["key"]),
                "configs": entries,
            }
        )
    )


def test_default_when_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv(configs.CONFIG_DIR_ENV, str(tmp_path))
    default = {"BLOCK": 64}
    got = configs.lookup_config("Ascend910B3", "no_such_kernel", {"n": 8}, default)
    assert got == default and got is not default  # a copy: callers may not mutate the default


def test_nearest_key_and_override_dir(tmp_path, monkeypatch):
    _write(
        tmp_path,
        "Ascend910B3",
        "k_test",
        [
            {"key": {"head_size": 128, "tokens": 16}, "config": {"BLOCK": 16}},
            {"key": {"head_size": 128, "tokens": 4096}, "config": {"BLOCK": 256}},
            {"key": {"head_size": 64, "tokens": 4096}, "config": {"BLOCK": 512}},
        ],
    )
    monkeypatch.setenv(configs.CONFIG_DIR_ENV, str(tmp_path))
    default = {"BLOCK": 1, "MULTIBUFFER": True}
    assert configs.lookup_config("Ascend910B3", "k_test", {"head_size": 128, "tokens": 2048}, default) == {
        "BLOCK": 256,
        "MULTIBUFFER": True,
    }
    assert (
        configs.lookup_config("Ascend910B3", "k_test", {"head_size": 128, "tokens": 20}, default)["BLOCK"]
        == 16
    )
    assert (
        configs.lookup_config("Ascend910B3", "k_test", {"head_size": 64, "tokens": 3000}, default)["BLOCK"]
        == 512
    )
    # Another SKU has no file: default.
    assert (
        configs.lookup_config("Ascend910B4", "k_test", {"head_size": 64, "tokens": 3000}, default) == default
    )


def test_non_numeric_key_fields_must_match(tmp_path, monkeypatch):
    _write(tmp_path, "Ascend910B3", "k_dtype", [{"key": {"dtype": "fp16", "n": 8}, "config": {"BLOCK": 8}}])
    monkeypatch.setenv(configs.CONFIG_DIR_ENV, str(tmp_path))
    assert configs.lookup_config("Ascend910B3", "k_dtype", {"dtype": "fp32", "n": 8}, {"BLOCK": 1}) == {
        "BLOCK": 1
    }
    assert configs.lookup_config("Ascend910B3", "k_dtype", {"dtype": "fp16", "n": 9}, {"BLOCK": 1}) == {
        "BLOCK": 8
    }


def test_untuned_sku_warns_once_not_per_kernel(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(configs.CONFIG_DIR_ENV, str(tmp_path))
    configs._warn_untuned_sku_once.cache_clear()
    with caplog.at_level("WARNING", logger=configs.__name__):
        for kernel in ("k_a", "k_b", "k_c"):
            configs.lookup_config("Ascend910B2", kernel, {"n": 1}, {"BLOCK": 1})
    assert [r.getMessage() for r in caplog.records] == [
        "no tuned configs for Ascend910B2; kernels use their default configs (sized for its UB)"
    ]
