"""The first-run demo of README trains both models end to end."""

from sltrain_ext import demo


def test_demo_runs_and_reports_both_models(capsys):
    demo.main(["--steps", "3"])
    out = capsys.readouterr().out
    assert "held-out perplexity" in out
    assert out.count("\nSLTrain") == 1 and out.count("\ndense") == 1
