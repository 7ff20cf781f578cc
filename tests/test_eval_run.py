"""run_eval, write_report and the eval command on tiny models: comparison choice, determinism, report files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import typer
from typer.testing import CliRunner

from headpatch.cli.evaluate import eval_command
from headpatch.errors import HeadpatchError
from headpatch.evaluation import run_eval, summary_markdown, write_report
from headpatch.evaluation.facts import NEEDLES, NEEDLES_2
from headpatch.evaluation.saved_answers import AnswerLog, log_path, model_answers
from headpatch.evaluation.tasks.copy import CopySetting
from headpatch.evaluation.tasks.mdqa import MdqaSetting
from headpatch.evaluation.tasks.niah import NiahSetting
from headpatch.evaluation.tasks.ppl import PplSetting
from headpatch.evaluation.tasks.retrieval import RetrievalSetting
from headpatch.io.lock import claimed
from tests.test_qrhead_retriever import exported_metadata
from tests.tiny import tiny_model

TINY_SETTINGS = {
    "copy": CopySetting(lengths=(5, 10), samples=4),
    "niah": NiahSetting(lengths=(128, 4096), depths=(0.0, 0.5, 1.0), needles=2, max_new_tokens=6,
                        batch_tokens=1024),
    "niah2": NiahSetting(lengths=(128,), depths=(0.0, 1.0), needles=2, max_new_tokens=6, batch_tokens=1024,
                         needle_set=2),
    "mdqa": MdqaSetting(passages=3, passage_words=30, facts=2, max_new_tokens=6, batch_tokens=1024),
    "ppl": PplSetting(window=64, windows=3),
    "retrieval": RetrievalSetting(examples=3, docs=3, batch_size=2, paraphrase=2),
}


def _save(directory, tokenizer, seed, headpatch=None):
    model = tiny_model("llama", seed=seed, vocab_size=len(tokenizer))
    if headpatch is not None:
        model.config.headpatch = headpatch
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(smollm2, tmp_path_factory):
    """A tiny base, a tiny "patched" model whose metadata names the base and ships QR heads, and a plain model."""
    root = tmp_path_factory.mktemp("eval-models")
    base = _save(root / "base", smollm2.tokenizer, 0)
    patched = _save(root / "patched", smollm2.tokenizer, 1,
                    exported_metadata(["2-1", "0-3"], source=str(base), base_model="nobody/not-a-model"))
    plain = _save(root / "plain", smollm2.tokenizer, 2)
    return {"base": base, "patched": patched, "plain": plain}


@pytest.fixture(scope="module")
def results(checkpoints):
    return run_eval(str(checkpoints["patched"]), settings=TINY_SETTINGS, show_progress=False)


def test_compares_with_the_source_named_in_the_metadata(results, checkpoints):
    assert list(results["models"]) == ["base", "patched"]
    assert results["comparison"]["chosen_by"] == "config.json headpatch metadata"
    assert results["models"]["base"]["location"] == str(checkpoints["base"].resolve())
    weights = checkpoints["base"] / "model.safetensors"
    file_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert results["models"]["base"]["weights"]["files"] == {"model.safetensors": file_hash}
    assert results["models"]["patched"]["weights"]["sha256"] != results["models"]["base"]["weights"]["sha256"]
    assert results["models"]["base"]["gguf"] is None  # a safetensors folder, not converted from a GGUF file
    assert results["models"]["patched"]["chat_template"] is True
    assert set(results["versions"]) >= {"headpatch", "torch", "transformers"}
    assert results["run"]["settings_replaced"] == ["copy", "mdqa", "niah", "ppl", "retrieval"]


def test_every_task_reports_every_model(results):
    tasks = results["tasks"]
    assert list(tasks) == ["copy", "niah", "mdqa", "ppl", "retrieval"]
    for name, task in tasks.items():
        assert set(task["models"]) == {"base", "patched"}, name
    niah = tasks["niah"]["models"]["base"]
    # 4096 tokens do not fit the tiny model's 512 positions: left out, and said so
    assert niah["lengths"] == [128] and niah["lengths_too_long"] == [4096]
    assert len(niah["grid"]) == 3 and len(niah["answers"]) == 3 * 2
    mdqa = tasks["mdqa"]["models"]["patched"]
    assert len(mdqa["by_position"]) == 3 and set(mdqa["by_kind"]) == {"invented", "counterfactual"}
    # the patched model's QR heads score both models
    for role in ("base", "patched"):
        retrieval = tasks["retrieval"]["models"][role]
        assert retrieval["heads"] == ["2-1", "0-3"] and retrieval["heads_from"] == "patched"
        assert list(retrieval["sets"]) == ["built-in set", "paraphrase set"]
        for name, examples in (("built-in set", 3), ("paraphrase set", 2)):
            ranked = retrieval["sets"][name]
            assert 0 <= ranked["recall@1"] <= 1 and 0 < ranked["mrr"] <= 1
            assert len(ranked["per_example"]["recall@1"]) == examples
    ppl = next(row for row in results["summary"] if row["task"] == "ppl")
    assert ppl["change"] == pytest.approx(ppl["values"]["patched"] / ppl["values"]["base"] - 1)
    copy = next(row for row in results["summary"] if row["task"] == "copy")
    assert copy["change"] == pytest.approx(copy["values"]["patched"] - copy["values"]["base"])


def test_every_row_but_the_worst_position_carries_a_paired_comparison_of_its_items(results):
    answers = {name: len(task["models"]["base"].get("answers", [])) for name, task in results["tasks"].items()}
    for row in results["summary"]:
        if row["metric"] == "accuracy, worst position":
            assert "paired" not in row
            continue
        paired = row["paired"]
        assert paired["change"] == pytest.approx(row["change"]) and paired["low"] <= paired["high"]
        assert 0 < paired["p_value"] <= 1 and paired["verdict"] in ("better", "worse", "no clear change")
        if row["metric"] in ("accuracy, mean over positions", "keyword score, mean over the grid"):
            assert paired["items"] == answers[row["task"]]
    ppl = results["tasks"]["ppl"]["models"]
    assert ppl["base"]["kl_from_base"] == 0 and ppl["patched"]["kl_from_base"] > 0
    assert len(ppl["patched"]["window_kl"]) == len(ppl["patched"]["window_losses"]) == 3
    kl = next(row for row in results["summary"] if row["metric"].startswith("KL from base"))
    assert kl["paired"]["items"] == 3 and kl["values"]["patched"] == pytest.approx(ppl["patched"]["kl_from_base"])


def test_same_seed_same_results_other_seed_other_inputs(results, checkpoints):
    again = run_eval(str(checkpoints["patched"]), tasks="copy,niah,mdqa", settings=TINY_SETTINGS,
                     show_progress=False)
    for name in ("copy", "niah", "mdqa"):
        assert again["tasks"][name] == results["tasks"][name]
    other = run_eval(str(checkpoints["patched"]), tasks="copy,mdqa", seed=1, settings=TINY_SETTINGS,
                     show_progress=False)
    assert other["tasks"]["mdqa"] != results["tasks"]["mdqa"]
    assert other["run"]["seed"] == 1


def test_a_model_without_metadata_runs_alone_and_skips_retrieval(checkpoints):
    alone = run_eval(str(checkpoints["plain"]), tasks=["copy", "retrieval"], settings=TINY_SETTINGS,
                     show_progress=False)
    assert list(alone["models"]) == ["model"] and alone["comparison"]["name"] is None
    assert "names no source model" in alone["comparison"]["notes"][0]
    assert "no model of the run has QR heads" in alone["tasks"]["retrieval"]["skipped"]
    assert [row["task"] for row in alone["summary"]] == ["copy"] * 3
    assert all(row["change"] is None for row in alone["summary"])
    table = summary_markdown(alone)
    assert table.startswith("| task | metric | model |\n") and "retrieval skipped: no model" in table


def test_explicit_reference_and_none(checkpoints):
    explicit = run_eval(str(checkpoints["plain"]), against=str(checkpoints["base"]), tasks="copy",
                        settings=TINY_SETTINGS, show_progress=False)
    assert explicit["comparison"]["chosen_by"] == "--against"
    assert explicit["models"]["base"]["location"] == str(checkpoints["base"].resolve())
    alone = run_eval(str(checkpoints["patched"]), against="none", tasks="copy", settings=TINY_SETTINGS,
                     show_progress=False)
    assert list(alone["models"]) == ["model"]
    with pytest.raises(HeadpatchError, match="cannot read model"):
        run_eval(str(checkpoints["plain"]), against="./missing-model", tasks="copy", show_progress=False)


def test_unloadable_metadata_source_falls_back_to_evaluating_alone(smollm2, tmp_path):
    orphan = _save(tmp_path / "orphan", smollm2.tokenizer, 3, {"source": str(tmp_path / "gone")})
    alone = run_eval(str(orphan), tasks="copy", settings=TINY_SETTINGS, show_progress=False)
    assert list(alone["models"]) == ["model"]
    assert "could not load" in alone["comparison"]["notes"][0]


def test_niah2_asks_the_second_needles_and_reports_apart_from_niah(checkpoints, tmp_path):
    both = run_eval(str(checkpoints["patched"]), tasks="niah2,niah", settings=TINY_SETTINGS, show_progress=False)
    assert list(both["tasks"]) == ["niah", "niah2"]
    for task, needles in (("niah", NEEDLES), ("niah2", NEEDLES_2)):
        answers = both["tasks"][task]["models"]["patched"]["answers"]
        assert {a["question"] for a in answers} == {fact.question for fact in needles[:2]}
    assert [row["task"] for row in both["summary"]] == ["niah", "niah", "niah2", "niah2"]
    assert all("paired" in row for row in both["summary"])
    names = {path.name for path in write_report(both, tmp_path / "report").iterdir()}
    assert {f"{task}_{role}.png" for task in ("niah", "niah2") for role in ("base", "patched", "difference")} <= names


def test_report_files_are_written_and_parseable(results, tmp_path):
    out = write_report(results, tmp_path / "report")
    names = sorted(path.name for path in out.iterdir())
    assert names == [".headpatch-manifest.json", "copy_accuracy.png", "mdqa_positions.png", "niah_base.png", "niah_difference.png",
                     "niah_patched.png", "report.md", "results.json"]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| task | metric | base | patched | change [95% CI] | items (better↑ worse↓) | p | detectable | verdict |" \
        in report
    assert "95% percentile bootstrap over items" in report
    for name in ("niah_difference.png", "mdqa_positions.png"):
        assert f"]({name})" in report
    assert summary_markdown(results).split("\n\n")[0] in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_non_empty_output_is_refused_unless_overwrite(results, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # not an earlier report: never replaced
        with pytest.raises(HeadpatchError, match="not empty"):
            write_report(results, out, overwrite=overwrite)
    assert (out / "keep.txt").read_text() == "mine"
    earlier = write_report(results, tmp_path / "earlier")
    (earlier / "extra.txt").write_text("added since")
    with pytest.raises(HeadpatchError, match="pass --overwrite"):
        write_report(results, earlier)
    with pytest.raises(HeadpatchError, match=r"holds files no headpatch run wrote there \(extra.txt\)"):
        write_report(results, earlier, overwrite=True)  # only what the earlier report wrote is replaced
    (earlier / "extra.txt").unlink()
    (earlier / "report.md").write_text("edited")
    write_report(results, earlier, overwrite=True)
    assert (earlier / "report.md").read_text().startswith("# headpatch evaluation")


def test_eval_command(checkpoints, tmp_path):
    app = typer.Typer()
    app.command(name="eval")(eval_command)
    app.command(name="unused")(lambda: None)  # two commands, so that the command name is an argument
    out = tmp_path / "report"
    args = ["eval", str(checkpoints["patched"]), "-o", str(out), "--tasks", "copy,ppl", "--quick", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| copy | accuracy n=25 |" in result.output and "report ->" in result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["run"]["quick"] is True and saved["run"]["tasks"] == ["copy", "ppl"]
    refused = CliRunner().invoke(app, args)
    assert isinstance(refused.exception, HeadpatchError) and "not empty" in str(refused.exception)
    unknown = CliRunner().invoke(app, ["eval", str(checkpoints["patched"]), "-o", str(tmp_path / "x"), "--tasks", "no"])
    assert isinstance(unknown.exception, HeadpatchError)


class _Killed(Exception):
    """Stands in for a kill between two batches."""


def _counting_batches(monkeypatch, stop_after=None):
    """Replace the tasks' generation with one that records each batch it runs, and dies before batch `stop_after`+1."""
    import headpatch.evaluation.tasks.base as task_base
    from headpatch.evaluation.generation import greedy_answers as real

    ran = []

    def counted(*args, **kwargs):
        for batch in real(*args, **kwargs):
            if stop_after is not None and len(ran) == stop_after:
                raise _Killed
            ran.append(batch)
            yield batch

    monkeypatch.setattr(task_base, "greedy_answers", counted)
    return ran


def test_an_interrupted_eval_resumes_from_its_answer_log_with_the_same_results(results, checkpoints, tmp_path,
                                                                                monkeypatch):
    model, tasks = str(checkpoints["patched"]), "niah,mdqa"
    ran = _counting_batches(monkeypatch)
    whole = run_eval(model, tasks=tasks, settings=TINY_SETTINGS, show_progress=False,
                     answer_log=AnswerLog(tmp_path / "whole.jsonl"))
    batches, answers = len(ran), sum(len(batch) for batch in ran)
    for name in ("niah", "mdqa"):
        assert whole["tasks"][name] == results["tasks"][name]  # keeping answers changes nothing
    assert len(AnswerLog(tmp_path / "whole.jsonl")) == answers  # every answer of both models, one key each

    cut = tmp_path / "cut.jsonl"
    _counting_batches(monkeypatch, stop_after=3)
    with pytest.raises(_Killed):
        run_eval(model, tasks=tasks, settings=TINY_SETTINGS, show_progress=False, answer_log=AnswerLog(cut))
    with open(cut, "a", encoding="utf-8") as handle:
        handle.write('{"key": "cut short by the kill", "ans')
    kept = AnswerLog(cut)
    assert 0 < kept.resumed < answers
    ran = _counting_batches(monkeypatch)
    resumed = run_eval(model, tasks=tasks, settings=TINY_SETTINGS, show_progress=False, answer_log=kept)
    assert len(ran) == batches - 3  # only what the killed run had not finished
    for name in ("niah", "mdqa"):
        assert resumed["tasks"][name] == whole["tasks"][name]


def test_answers_are_not_reused_for_another_model_or_setting(checkpoints, tmp_path, monkeypatch):
    log = AnswerLog(tmp_path / "answers.jsonl")
    run_eval(str(checkpoints["patched"]), tasks="niah", settings=TINY_SETTINGS, show_progress=False, answer_log=log)
    ran = _counting_batches(monkeypatch)
    run_eval(str(checkpoints["plain"]), tasks="niah", settings=TINY_SETTINGS, show_progress=False,
             answer_log=AnswerLog(log.path))
    assert ran  # another model's weights: nothing reused
    ran.clear()
    longer = {"niah": replace(TINY_SETTINGS["niah"], max_new_tokens=7)}
    run_eval(str(checkpoints["plain"]), tasks="niah", settings=longer, show_progress=False,
             answer_log=AnswerLog(log.path))
    assert ran  # another answer length: nothing reused
    ran.clear()
    run_eval(str(checkpoints["plain"]), tasks="niah", settings=longer, show_progress=False,
             answer_log=AnswerLog(log.path))
    assert not ran  # the same again: everything reused


def test_the_answer_log_is_beside_the_output_made_with_the_first_answer_and_removed_with_the_report(
        checkpoints, tmp_path):
    app = typer.Typer()
    app.command(name="eval")(eval_command)
    app.command(name="unused")(lambda: None)
    out = tmp_path / "report"
    log = log_path(out)
    assert log == tmp_path / ".report.answers.jsonl"
    args = ["eval", str(checkpoints["patched"]), "-o", str(out), "--tasks", "niah", "--quick", "-q"]
    AnswerLog(log).add({"an answer of an interrupted run": "Paris"})
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"resuming: 1 answers on file from an interrupted run ({log})" in result.output
    assert (out / "results.json").is_file() and not log.exists()
    AnswerLog(log).add({"another": "Rome"})
    refused = CliRunner().invoke(app, args)  # the output exists: refused before any work, the log left as it was
    assert isinstance(refused.exception, HeadpatchError)
    assert AnswerLog(log).resumed == 1
    log.unlink()
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_the_answer_log_outlives_a_report_that_could_not_be_written(checkpoints, tmp_path, monkeypatch):
    from headpatch.evaluation import report

    def cannot_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_report", cannot_write)
    app = typer.Typer()
    app.command(name="eval")(eval_command)
    app.command(name="unused")(lambda: None)
    out = tmp_path / "report"
    failed = CliRunner().invoke(app, ["eval", str(checkpoints["patched"]), "-o", str(out), "--tasks", "niah",
                                      "--quick", "-q"])
    assert isinstance(failed.exception, OSError)
    assert len(AnswerLog(log_path(out))) == 2 * 12  # both models' answers, kept for the next try


def test_a_model_without_a_weights_hash_keeps_no_answers_and_keys_name_what_an_answer_depends_on(checkpoints,
                                                                                                  tmp_path):
    from headpatch.loading import load_model

    log = AnswerLog(tmp_path / "answers.jsonl")
    loaded = load_model(str(checkpoints["base"]))
    assert model_answers(log, loaded, None, "float32") is None and model_answers(None, loaded, "ab", "float32") is None
    one, other = model_answers(log, loaded, "ab", "float32"), model_answers(log, loaded, "ab", "bfloat16")
    prompts = [[1, 2], [1, 3], [1, 2]]
    keys = one.keys(prompts, 32, 4096)
    assert keys == one.keys(prompts, 32, 4096) and len(set(keys)) == 3  # a repeated prompt has its own place
    assert not set(keys) & set(one.keys(prompts[:2], 32, 4096))  # another prompt list: other batches
    assert not set(keys) & {*one.keys(prompts, 31, 4096), *one.keys(prompts, 32, 2048), *other.keys(prompts, 32, 4096)}
    loaded.model.generation_config.repetition_penalty = 1.3
    assert not set(keys) & set(model_answers(log, loaded, "ab", "float32").keys(prompts, 32, 4096))
    assert not log.path.exists()  # made with the first answer only


def _eval_app() -> typer.Typer:
    app = typer.Typer()
    app.command(name="eval")(eval_command)
    app.command(name="unused")(lambda: None)
    return app


def test_a_second_eval_to_the_same_output_is_refused_at_once_and_a_stale_lock_does_not_block(checkpoints, tmp_path):
    out = tmp_path / "report"
    args = ["eval", str(checkpoints["patched"]), "-o", str(out), "--tasks", "niah", "--quick", "-q"]
    lock = tmp_path / ".report.lock"
    with claimed(out):  # another run, mid-way
        assert lock.is_file()
        refused = CliRunner().invoke(_eval_app(), args)
        assert isinstance(refused.exception, HeadpatchError)
        assert f"another run is writing {out}" in str(refused.exception)
        assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name]  # no log, no report; the lock is the other's
    assert not lock.exists()
    lock.write_text("")  # left by a run that was killed: nobody holds it
    assert CliRunner().invoke(_eval_app(), args).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]

