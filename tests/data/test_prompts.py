from fellrec.data.prompts import PromptStyle, render, response
from fellrec.data.table import Sample

EXPECTED = '''Below is an instruction that describes a task, paired with an input that provides further context. \
Write a response that appropriately completes the request.

### Instruction:
Given a list of video games the user has played before, please recommend a new video game that the user likes to \
the user.

### Input:
The user has played the following video games before: "Zelda", "Portal 2"

### Response:
'''


def test_prompt_matches_the_bigrec_template():
    assert PromptStyle("video games", "played").prompt(["Zelda", "Portal 2"]) == EXPECTED


def test_render_turns_ids_into_titles_and_quotes_the_response():
    titles = {"1": "Toy Story (1995)", "2": "Heat (1995)", "3": "Fargo (1996)"}
    prompt, answer = render(Sample("u", ("1", "2"), ("3",)), titles, PromptStyle())
    assert prompt.endswith('The user has watched the following movies before: "Toy Story (1995)", '
                           '"Heat (1995)"\n\n### Response:\n')
    assert "please recommend a new movie that" in prompt
    assert answer == '"Fargo (1996)"'
    assert response(["A", "B"]) == '"A", "B"'


def test_without_years_the_history_drops_them_and_the_response_keeps_them():
    titles = {"1": "Toy Story (1995)", "2": "Seven (Se7en) (1995)", "3": "Fargo (1996)", "4": "unknown"}
    style = PromptStyle(template="compact", years=False)
    prompt, answer = render(Sample("u", ("1", "2", "4"), ("3",)), titles, style)
    assert prompt == "Movies watched: Toy Story; Seven (Se7en); unknown; Next movie:"
    assert answer == '"Fargo (1996)"'
    assert PromptStyle(template="compact").prompt(["Toy Story (1995)"]) == "Movies watched: Toy Story (1995); Next movie:"
