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
def test_vat_compile_json_for_a3(capsys):
    assert vat_main(["compile", "--sku", "Ascend910_9392", "--family", "rope", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["sku"] == "Ascend910_9392" and r["stage"] == "adapter" for r in rows)
    assert all(r["mix_mode"] == "aiv" and r["fits_ub"] and r["discrete_accesses"] == 0 for r in rows)


def test_vat_compile_rejects_unsupported_sku():
    with pytest.raises(SystemExit) as exit_info:
        vat_main(["compile", "--sku", "Ascend310P3"])
    assert exit_info.value.code == 2
