"""medssr.cli: the `medssr` command reads params files with the pipeline's checks and takes paths from them."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cli_reads_params_files_with_the_same_check(tmp_path, capsys):
    from medssr.cli import main

    (tmp_path / "params.yaml").write_text("eval:\n  runs: 1\n")
    (tmp_path / "eval.json").write_text("{}")
    main(["table", str(tmp_path / "eval.json"), "--params", str(tmp_path / "params.yaml")])
    assert f"{tmp_path / 'params.yaml'}: missing project, data, model, corpus, synth, label, train, eval.benchmarks" in capsys.readouterr().err


def test_cli_review_help_lists_its_subcommands(capsys):
    from medssr.cli import main

    with pytest.raises(SystemExit):
        main(["review", "--help"])
    assert "export" in capsys.readouterr().out


def test_medssr_retrieve_reads_the_index_dir_from_params_unless_given(tmp_path, capsys):
    import yaml

    from medssr.cli import main

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    raw["corpus"]["index_dir"] = str(tmp_path / "from-params")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["retrieve", "x", "--params", str(tmp_path / "params.yaml")]) == 2
    assert f"{tmp_path / 'from-params'}: no complete passage index" in capsys.readouterr().err
    assert main(["retrieve", "x", "--params", str(tmp_path / "params.yaml"), "--index-dir", str(tmp_path / "given")]) == 2
    assert f"{tmp_path / 'given'}: no complete passage index" in capsys.readouterr().err
