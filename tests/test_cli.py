"""`vat check` and `vat compile`: the commands `make bench` runs."""

import json

import pytest

from vllm_ascend_triton.cli import build_parser
from vllm_ascend_triton.cli import main as vat_main


def test_every_subcommand_has_help_and_json():
    parser = build_parser()
    for command in ("info", "check", "compile", "sim"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert parser.parse_args([command, "--json"]).json is True


def test_vat_check_json(capsys):
    assert vat_main(["check", "--family", "rope", "--family", "moe_routing", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "interpreter" and report["failed"] == 0
    assert {r["kernel"] for r in report["results"]} >= {"rotary_embedding", "fused_topk", "grouped_topk"}
    assert all(r["ok"] and r["max_abs_err"] <= r["atol"] for r in report["results"])


@pytest.mark.slow
def test_vat_compile_json_for_a3_is_incremental(capsys, tmp_path):
    args = ["compile", "--sku", "Ascend910_9392", "--family", "rope", "--json", "--cache-dir", str(tmp_path)]
    assert vat_main(args) == 0
    first = json.loads(capsys.readouterr().out)
    rows = first["rows"]
    assert rows and all(r["sku"] == "Ascend910_9392" and r["stage"] == "adapter" for r in rows)
    assert all(r["mix_mode"] == "aiv" and r["fits_ub"] and r["discrete_accesses"] == 0 for r in rows)
    assert all(r["grid_within_cores"] and r["ub_bytes_buffered"] <= r["sku_ub_bytes"] for r in rows)
    assert first["summary"]["lowered_now"] == len(rows)
    # Unchanged variants come from the content-addressed cache: nothing is lowered again.
    assert vat_main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["summary"]["lowered_now"] == 0 and second["summary"]["from_cache"] == len(rows)
    assert all(r["cached"] for r in second["rows"])


@pytest.mark.slow
def test_vat_compile_rejects_an_oversized_config_with_the_buffer_figure(capsys, tmp_path, monkeypatch):
    from vllm_ascend_triton.kernels import moe_routing

    # A planted config (as a tuned-config file would give it) whose row tile cannot fit the UB.
    def planted(sku, kernel, key, default):
        return {**default, "BLOCK_M": 4096} if kernel == "fused_topk" else dict(default)

    monkeypatch.setattr(moe_routing, "lookup_config", planted)
    args = ["compile", "--sku", "Ascend910B3", "--family", "moe_routing", "--kernel", "fused_topk", "--quiet"]
    code = vat_main([*args, "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "UB overflow" in out and "196608 bytes of Ascend910B3's Unified Buffer" in out


@pytest.mark.parametrize("sku", ["Ascend310P3", "Ascend999"])
def test_vat_compile_rejects_unsupported_or_unknown_sku(sku, capsys):
    assert vat_main(["compile", "--sku", sku]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and sku in err[0]


def test_unknown_vat_sku_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("VAT_SKU", "Ascend999")
    assert vat_main(["info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Ascend999" in err[0] and "Ascend910B3" in err[0]
