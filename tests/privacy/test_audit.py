"""The privacy audit: title spans, h_k as the client's head computes it (dense, nf4, Llama and Qwen2), the attacks'
values on cases with a known answer, the public/victim split, and the `fellrec audit` command."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from fellrec.cli import main
from fellrec.config import DataArgs, ModelArgs, PartitionArgs, SplitArgs
from fellrec.data.prompts import PromptStyle
from fellrec.data.table import RecData, Sample
from fellrec.errors import FellrecError
from fellrec.privacy.audit import (Inverter, check_head_layers, decode, head_states, items_of, nearest_neighbour,
                                   public_titles, recovery, render_with_spans, run_audit, title_token_states,
                                   train_inverter, victim_prompts)

TITLES = ["Super Mario Odyssey", "Halo 3", 'Tom Clancy\'s "Splinter Cell", Chaos Theory', "Toy Story (1995)",
          "Twelve Monkeys (1995)", "Se7en (1995)", "Zelda"]
STYLE = PromptStyle("video games", "played")
TINY_CONFIG = str(Path(__file__).resolve().parents[2] / "conf" / "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_lm():
    from fellrec.model.loading import load_base_model, load_tokenizer

    args = ModelArgs(name="tiny-llama", quantize="none")
    return load_base_model(args), load_tokenizer(args)


def _prompts():
    """Prompts of different lengths, so a batch is left-padded."""
    return [render_with_spans(TITLES[:3], STYLE), render_with_spans(TITLES[3:4], STYLE),
            render_with_spans(TITLES[4:], STYLE)]


def test_spans_point_at_the_titles_even_with_quotes_and_commas():
    prompt = render_with_spans(TITLES, STYLE)
    assert prompt.text == STYLE.prompt(TITLES)
    assert [prompt.text[a:b] for a, b in prompt.spans] == TITLES


def test_title_tokens_are_aligned_with_their_titles_and_padding_is_left_out(tiny_lm):
    lm, tokenizer = tiny_lm
    tokens = title_token_states(lm, tokenizer, _prompts(), ks=[0, 2])
    assert tokens.num_titles == len(TITLES) and tokens.scored_titles == len(TITLES)
    assert (tokens.ids != tokenizer.pad_token_id).all()
    for t, title in enumerate(TITLES):
        assert title in tokenizer.decode(tokens.ids[tokens.title_of == t])
    assert tokens.hidden[0].shape == tokens.hidden[2].shape == (len(tokens.ids), lm.config.hidden_size)


def test_at_k0_nearest_neighbour_recovers_every_token_and_a_misaligned_row_would_not(tiny_lm):
    lm, tokenizer = tiny_lm
    tokens = title_token_states(lm, tokenizer, _prompts(), ks=[0])
    embeddings = lm.get_input_embeddings().weight.detach()
    predicted = nearest_neighbour(tokens.hidden[0], embeddings)
    assert recovery(predicted, tokens.ids, tokens.title_of, tokens.num_titles) == {"token_recovery": 1.0,
                                                                                 "title_recovery": 1.0}
    shifted = nearest_neighbour(tokens.hidden[0].roll(1, dims=0), embeddings)  # rows one token off
    assert recovery(shifted, tokens.ids, tokens.title_of, tokens.num_titles)["token_recovery"] < 0.2


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_head_states_equal_the_split_clients_head(name):
    from fellrec.model.split import SplitModel

    model = SplitModel(ModelArgs(name=name, quantize="none"), SplitArgs(head_layers=3, tail_layers=0), device="cpu")
    ids = torch.randint(3, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    with torch.no_grad():
        expected, _ = model.sides().client.head(ids, mask)
    got = head_states(model.causal_lm, ids, mask, [0, 3])
    real = mask.bool()
    torch.testing.assert_close(got[3][real], expected[real])
    torch.testing.assert_close(got[0], model.causal_lm.model.embed_tokens(ids))


def test_head_states_on_an_nf4_body(tiny_lm):
    from fellrec.model.quantize import quantize_blocks

    lm, _ = tiny_lm
    quantized = copy.deepcopy(lm)
    assert quantize_blocks(quantized.model.layers, torch.float32, "cpu") == 4 * 7  # q k v o gate up down per block
    ids = torch.randint(3, 49152, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    dense, nf4 = head_states(lm, ids, mask, [0, 2]), head_states(quantized, ids, mask, [0, 2])
    torch.testing.assert_close(nf4[0], dense[0])
    gap = (nf4[2] - dense[2]).norm() / (dense[2] - dense[0]).norm()  # relative to what the blocks add
    assert 0 < gap < 0.5


def test_recovery_counts_tokens_and_whole_titles():
    ids = torch.tensor([5, 6, 7, 8, 9, 10])
    title_of = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([5, 6, 7, 0, 9, 10])  # one token of title 1 wrong
    assert recovery(predicted, ids, title_of, 3) == pytest.approx({"token_recovery": 5 / 6, "title_recovery": 2 / 3})


def test_inverter_starts_as_the_nearest_neighbour_and_learns_what_it_cannot():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(49152, 64, generator=g) * 0.02
    ids = torch.randint(0, 300, (1200,), generator=g)
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=g))[0]
    hidden = embeddings[ids] @ rotation  # an invertible map the cosine match cannot see through
    with torch.random.fork_rng(devices=[]):
        untrained = Inverter(64, 16)
    assert torch.equal(decode(untrained, hidden, embeddings), nearest_neighbour(hidden, embeddings))
    train, test = slice(0, 1000), slice(1000, None)
    assert (nearest_neighbour(hidden[test], embeddings) == ids[test]).float().mean() < 0.05
    inverter = train_inverter(hidden[train], ids[train], embeddings, None, epochs=5, seed=0, lr=1e-2)
    assert (decode(inverter, hidden[test], embeddings) == ids[test]).float().mean() > 0.9


def test_head_layers_must_leave_the_server_a_block():
    assert check_head_layers([8, 0, 2, 2], 30) == [0, 2, 8]
    with pytest.raises(FellrecError, match=r"--head-layers 30: k must be in 0\.\.29"):
        check_head_layers([0, 30], 30)
    with pytest.raises(FellrecError, match="-1"):
        check_head_layers([-1], 4)


def _catalogue(source_titles: dict[str, str]) -> RecData:
    """Users 0-1 (the victim client) touch items 0-3; users 2-3 touch 4-7; items 8-9 nobody touches."""
    train_pairs = [("0", "0"), ("0", "1"), ("1", "2"), ("2", "4"), ("3", "5")]
    test = [Sample("0", ("0", "1"), ("3",)), Sample("1", ("2", "1", "0"), ("3",)), Sample("2", ("4", "5"), ("6",)),
            Sample("3", ("5",), ("7",))]
    return RecData("test", [], [], test, source_titles, {}, train_pairs, 4, 9)


def test_victim_prompts_are_the_clients_own_and_capped():
    titles = {str(i): f"Item {i}" for i in range(10)}
    data = _catalogue(titles)
    prompts = victim_prompts(data, ["0", "1"], STYLE, max_titles=4, seed=0)
    shown = [p.text[a:b] for p in prompts for a, b in p.spans]
    assert len(shown) == 4 and set(shown) <= {"Item 0", "Item 1", "Item 2"}
    assert items_of(data, ["0", "1"]) == {"0", "1", "2", "3"}


def test_public_titles_never_hold_a_victim_title():
    titles = {str(i): f"Item {i}" for i in range(10)}
    titles["9"] = "Item 0"  # an untouched item sharing a victim item's title stays out too
    data = _catalogue(titles)
    public = public_titles(data, DataArgs(), items_of(data, ["0", "1"]), max_titles=100, seed=0)
    assert sorted(public.titles) == ["Item 4", "Item 5", "Item 6", "Item 7", "Item 8"]
    assert "no user of the victim client" in public.description
    data = _catalogue({**titles, "0": "Toy Story (1995)"})  # another dataset: MovieLens-100K is the public text
    other = public_titles(data, DataArgs(source="csv"), items_of(data, ["0", "1"]), max_titles=2000, seed=0)
    assert "Toy Story (1995)" not in other.titles and "GoldenEye (1995)" in other.titles
    assert "other than the victim's" in other.description


def test_audit_command_writes_one_row_per_k(cli, tmp_path):
    result = cli("audit", "--config", "conf/tiny.yaml", "--head-layers", "0", "1", "3", "--max_titles", "12",
                 "--epochs", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "audit.json").read_text())
    assert [row["k"] for row in report["rows"]] == [0, 1, 3]
    for row in report["rows"]:
        assert all(0.0 <= row[key] <= 1.0 for key in row if key.endswith("_recovery"))
    assert report["rows"][0]["nn_token_recovery"] == 1.0 and report["rows"][0]["nn_title_recovery"] == 1.0
    assert report["victim_titles"] == 12 and 0 < report["public_titles"] <= 12
    table = [line for line in (tmp_path / "audit.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 and table[1].startswith("| 0 | 100.0% |")
    assert "public text" in result.stdout and "| 3 |" in result.stdout
    assert (tmp_path / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_refuses_a_k_the_model_does_not_have(capsys, tmp_path):
    code = main(["audit", "--config", TINY_CONFIG, "--head-layers", "0", "4", "--out", str(tmp_path)])
    assert code == 1
    assert "fellrec: error: --head-layers 4: k must be in 0..3" in capsys.readouterr().err
    assert not (tmp_path / "audit.md").exists()


@pytest.mark.slow
def test_smollm2_leaks_through_a_learned_inverter_where_the_cosine_match_fails():
    result = run_audit(DataArgs(train_samples=96), PartitionArgs(), ModelArgs(), [0, 2], max_titles=60, epochs=5)
    k0, k2 = result["rows"]
    assert k0["nn_token_recovery"] == 1.0
    assert k2["nn_token_recovery"] < 0.05 < 0.5 < k2["linear_token_recovery"]


def test_boundary_noise_audit_puts_each_levels_fit_beside_its_recovery(cli, tmp_path):
    """Noise 0 leaves h_0 the embedding row (every token recovered); noise 30 x the RMS buries it; each level's
    NDCG@10 is that of its own fit (results.json under defence-runs/), on the row of the fit's k only."""
    args = ("audit", "--config", "conf/tiny.yaml", "--head-layers", "0", "1", "--boundary-noise", "0", "30",
            "--max_titles", "12", "--epochs", "1", "--out", str(tmp_path), "--fed.rounds", "1",
            "--data.train_samples", "12", "--eval.users_per_client", "3")
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "defence.json").read_text())
    assert [(r["k"], r["noise"]) for r in report["rows"]] == [(0, 0.0), (1, 0.0), (0, 30.0), (1, 30.0)]
    assert report["rows"][0]["nn_token_recovery"] == 1.0 and report["rows"][2]["nn_token_recovery"] < 0.5
    for row in report["rows"]:
        assert {"mlp_token_recovery", "linear_token_recovery", "ndcg@10"} <= set(row)
        if row["k"] != 1:  # conf/tiny.yaml fits at k = 1
            assert row["ndcg@10"] is None
            continue
        fit = json.loads((tmp_path / "defence-runs" / f"noise_{row['noise']:g}" / "results.json").read_text())
        assert row["ndcg@10"] == fit["overall"]["ndcg@10"] and fit["objective"] == "score"
    runs = tmp_path / "defence-runs"
    losses = {noise: (runs / noise / "rounds.csv").read_text() for noise in ("noise_0", "noise_30")}
    assert losses["noise_0"] != losses["noise_30"]  # the noise reached the fit (its validation loss moved)
    assert (tmp_path / "defence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamp = (runs / "noise_0" / "results.json").stat().st_mtime_ns
    again = cli(*args)  # the finished fits are reused
    assert again.returncode == 0 and (runs / "noise_0" / "results.json").stat().st_mtime_ns == stamp


def test_spans_hold_in_the_compact_prompt_too():
    titles = ["Tom Clancy's \"Splinter Cell\", Chaos Theory", "Portal", "Portal 2"]
    prompt = render_with_spans(titles, PromptStyle("video games", "played", "compact"))
    assert prompt.text == ("Video games played: Tom Clancy's \"Splinter Cell\", Chaos Theory; Portal; Portal 2; "
                           "Next video game:")
    assert [prompt.text[a:b] for a, b in prompt.spans] == titles


def test_spans_cover_the_titles_as_shown_when_years_are_dropped():
    prompt = render_with_spans(["Heat (1995)", "Heat (1986)"], PromptStyle(template="compact", years=False))
    assert prompt.text == "Movies watched: Heat; Heat; Next movie:"
    assert prompt.spans == [(16, 20), (22, 26)]
