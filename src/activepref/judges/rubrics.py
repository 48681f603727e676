"""Judge prompt texts (our own words). The instruction and the response come first and the
aspect question last, so a server with prefix caching reuses the shared prefix across the
four aspects of one response."""

from __future__ import annotations

JUDGE_SYSTEM = (
    "You grade answers written by AI assistants. You will see a user's instruction, an "
    "assistant's response, and then one question about a single quality of that response. "
    "Reply with one digit from 1 to 5 and nothing else."
)

ASPECT_QUESTIONS: dict[str, str] = {
    "helpfulness": (
        "How helpful is the response? 1 = does not address the request or is useless; 2 = touches "
        "the request but misses most of what was needed; 3 = partly useful with clear gaps; 4 = "
        "useful and mostly complete; 5 = fully addresses the request with useful detail."
    ),
    "truthfulness": (
        "How free of false or invented content is the response? 1 = mostly fabricated or wrong; "
        "2 = serious factual errors; 3 = some errors or unsupported claims; 4 = minor slips only; "
        "5 = everything stated is correct and nothing is made up."
    ),
    "honesty": (
        "How well does the response express appropriate confidence? 1 = confidently wrong or "
        "misleading; 2 = overconfident on shaky ground; 3 = uneven calibration; 4 = mostly "
        "calibrated; 5 = confident where warranted and open about uncertainty elsewhere."
    ),
    "instruction_following": (
        "How closely does the response follow the instruction, including its format, length and "
        "constraints? 1 = ignores it; 2 = follows a small part; 3 = follows about half; 4 = follows "
        "it with small deviations; 5 = follows every part exactly."
    ),
}

LIKERT_SUFFIX = "Answer with a single digit (1, 2, 3, 4 or 5)."

PAIRWISE_SYSTEM = (
    "You compare two answers written by AI assistants to the same instruction and say which "
    "one is better overall: more helpful, more accurate, more honest and closer to the "
    "instruction. Reply with the single letter A or B and nothing else."
)


def likert_messages(instruction: str, response: str, aspect: str) -> list[dict[str, str]]:
    question = ASPECT_QUESTIONS[aspect]
    user = (
        f"## Instruction\n{instruction}\n\n## Response\n{response}\n\n"
        f"## Question\n{question}\n{LIKERT_SUFFIX}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(instruction: str, first: str, second: str) -> list[dict[str, str]]:
    user = (
        f"## Instruction\n{instruction}\n\n## Response A\n{first}\n\n## Response B\n{second}\n\n"
        "## Question\nWhich response is better? Answer with the single letter A or B."
    )
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]
