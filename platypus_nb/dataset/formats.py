"""One formatter per source: the source's real schema to ``{instruction, input, output}``, as the original did.

Each follows the matching script of the original repository (``data_pipeline/*_format.py`` at dc90c1a); the facts
carried over are written down in docs/dataset.md ("What each original formatter does") and cited in the
docstrings. A record that does not fit its source's schema raises :class:`~platypus_nb.dataset.rows.BadRowError`
naming the field and what was expected; the source's own selection rules (ScienceQA's skills, tigerbot's
"python", PRM800K's solved-and-answered samples) drop records with a reason.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from platypus_nb.dataset.rows import BadRowError, make_row, removal, row_id
from platypus_nb.dataset.sources import SOURCE_INFO

MULTIPLE_CHOICE_INPUT = "Choose A, B, C or D as your solution."
PRM_ANSWER_MARKER = "# Answer\n\n"
# scienceqa_format.py: skills removed, spelled exactly as the original wrote them (whether the last two match the
# dataset's real skill names could not be checked offline).
SCIENCEQA_SKIPPED_SKILLS = (
    "Choose customary units of distance",
    "Choose customary units of mass",
    "Choose customary units of volume",
    "Is it a complete sentence or a run-on",
    "Is the sentence simple compound, comples, or compound-complex",
    "Use guide words",
)
# scienceqa_format.py: the lecture is kept as input only for questions that refer to it.
SCIENCEQA_NEEDS_LECTURE = ("What information supports", "Based on", "Read the following", "Use the evidence",
                           "Look at the", "According to a")
SCIENCEQA_MAX_INPUT_WORDS = 400


class Dropped(Exception):
    """A record the source's own rules leave out (not an error): ``reason`` goes into removed.csv."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Formatted:
    """A source's rows after formatting, and what its formatter removed."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class FormatOptions:
    seed: int = 42
    on_bad_row: str = "skip"
    math_unwrap_boxed: bool = True
    theoremqa_theorem: str = "definition"


def get(record: Any, key: str, *types: type) -> Any:
    """``record[key]`` checked against the expected types; a misfit raises BadRowError naming the field."""
    if not isinstance(record, dict):
        raise BadRowError(f"expected a record (mapping), got {type(record).__name__}")
    if key not in record:
        raise BadRowError(f"missing field {key!r} (fields present: {', '.join(map(str, record)) or 'none'})")
    value = record[key]
    # bool is an int subclass in Python; a True where a number or index is expected is still a misfit.
    if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        expected = " or ".join(t.__name__ for t in types)
        raise BadRowError(f"field {key!r}: expected {expected}, got {type(value).__name__} {str(value)[:60]!r}")
    return value


def _letter(i: int) -> str:
    return chr(65 + i)


# ------------------------------------------------------------------------------------- one record at a time


def format_theoremqa(record: Any, theorem: str = "definition") -> tuple[str, str, str]:
    """theoremqa_format.py: ``"{Question}\\nRelevant Theorem: {theorem_def}"`` -> the bare Answer.

    ``theorem_def`` is the definition the loader joined by theorem name (docs/dataset.md, "TheoremQA's theorem
    definitions"); ``theorem="name"`` puts the theorem's name there instead (``dataset.theoremqa_theorem``). The
    answer is written as the Hub CSV holds it: Python's ``str`` of the JSON value (``11760``, ``0.5``, ``True``,
    ``[1, 2]``).
    """
    question = get(record, "Question", str)
    text = get(record, "theorem_def" if theorem == "definition" else "theorem", str)
    answer = get(record, "Answer", str, int, float, bool, list)
    return f"{question}\nRelevant Theorem: {text}", "", answer if isinstance(answer, str) else str(answer)


def format_scibench(record: Any) -> tuple[Optional[str], str, Any]:
    """scibench_format.py: problem_text -> solution, or answer_number when there is no worked solution."""
    instruction = get(record, "problem_text", str, type(None))
    output = record.get("solution") or record.get("answer_number")
    return instruction, "", output if output is None or isinstance(output, str) else str(output)


def format_reclor(record: Any) -> tuple[str, str, str]:
    """reclor_formatted.py: context + " " + question + lettered answers -> the letter of the label only."""
    context, question = get(record, "context", str), get(record, "question", str)
    answers, label = get(record, "answers", list), get(record, "label", int)
    if not 0 <= label < len(answers):
        raise BadRowError(f"field 'label': {label} is not an index into {len(answers)} answers")
    instruction = context + " " + question + "".join(f"\n{_letter(i)}: {a}" for i, a in enumerate(answers))
    return instruction, MULTIPLE_CHOICE_INPUT, _letter(label)


def format_leetcode(record: Any) -> tuple[str, str, str]:
    """leetcode_format.py: prompt -> full_code."""
    return get(record, "prompt", str), "", get(record, "full_code", str)


def format_airoboros(record: Any) -> tuple[str, str, str]:
    """airoboros_format.py: instruction -> response (then keyword-filtered)."""
    return get(record, "instruction", str), "", get(record, "response", str)


def format_tigerbot(record: Any) -> tuple[str, str, str]:
    """tigerbot_format.py: keep rows whose instruction says "python"; the problem (``input``) is the instruction."""
    if "python" not in get(record, "instruction", str):
        raise Dropped("not_python", "instruction does not contain 'python'")
    return get(record, "input", str), "", get(record, "output", str)


def format_guanaco(record: Any) -> tuple[str, str, str]:
    """guanaco_format.py: split at the first "### Assistant:"; later turns stay in the output, relabelled."""
    text = get(record, "text", str)
    if "### Assistant:" not in text:
        raise BadRowError("field 'text': no '### Assistant:' turn to split at")
    instruction, output = text.split("### Assistant:", 1)
    output = output.replace("### Human:", "### Instruction:\n").replace("### Assistant:", "### Response:\n")
    return instruction.replace("### Human:", "").strip(), "", output.strip()


def format_arb(record: Any) -> tuple[str, str, str]:
    """duckai_format.py: math/physics Problem_Statement -> Solution; multiple choice with options "A. ..."

    mcatReading and mcatScience drop the solution's first sentence; law answers with its "Final Answer". A
    one-sentence solution so becomes an empty output, which the original kept (``dataset.incomplete_as_original``).
    """
    library = get(record, "_library", str)
    if library in ("math", "physics"):
        return get(record, "Problem_Statement", str), "", get(record, "Solution", str)
    if library not in ("mcatReading", "mcatScience", "law"):
        raise BadRowError(f"field '_library': unknown ARB library {library!r}")
    options = get(record, "Answer Candidates", list)
    instruction = get(record, "Problem Statement", str) + "".join(
        f"\n{_letter(i)}. {option}" for i, option in enumerate(options))
    if library == "law":
        output = get(record, "Final Answer", str)
    else:
        output = get(record, "Solution", str).split(".", 1)[-1].lstrip()
    return instruction, MULTIPLE_CHOICE_INPUT, output


def _lettered_choices_openbookqa(choices: list[str]) -> str:
    """OpenBookQA_format.py joins "\\nA: c1", "B: c2", ... with newlines: a blank line before the first option."""
    return "\n".join((f"\n{_letter(i)}: {c}" if i == 0 else f"{_letter(i)}: {c}") for i, c in enumerate(choices))


def format_openbookqa(record: Any) -> tuple[str, str, str]:
    """OpenBookQA_format.py: stem + ": " + options; input = fact1 (the "additional" config; empty without it)."""
    stem, answer_key = get(record, "question_stem", str), get(record, "answerKey", str)
    choices = get(get(record, "choices", dict), "text", list)
    position = ord(answer_key) - 65 if len(answer_key) == 1 else -1
    if not 0 <= position < len(choices):
        raise BadRowError(f"field 'answerKey': {answer_key!r} does not name one of {len(choices)} choices")
    fact = record.get("fact1") or ""
    return (stem + ": " + _lettered_choices_openbookqa(choices), fact,
            f"The answer is {answer_key}: {choices[position]}")


def format_sciq(record: Any, rng: random.Random) -> tuple[str, str, str]:
    """Not in the original: SciQ in OpenBookQA's format, the correct answer at a seeded random position."""
    question, correct = get(record, "question", str), get(record, "correct_answer", str)
    options = [correct] + [get(record, f"distractor{i}", str) for i in (1, 2, 3)]
    rng.shuffle(options)
    letter = _letter(options.index(correct))
    return (question + ": " + _lettered_choices_openbookqa(options), get(record, "support", str),
            f"The answer is {letter}: {correct}")


# ------------------------------------------------------------------------------------------ whole sources


def format_records(name: str, records: list[Any], fn: Callable[[Any], tuple[Any, Any, Any]],
                   options: FormatOptions) -> Formatted:
    """Apply a per-record formatter, turning bad records into removals (skip) or an error naming the row (stop)."""
    out = Formatted()
    data_source = SOURCE_INFO[name].data_source
    for i, record in enumerate(records):
        try:
            instruction, input_, output = fn(record)
        except Dropped as d:
            out.removed.append(removal(row_id(name, i), name, "format", d.reason, detail=d.detail,
                                       instruction=_preview(record)))
            continue
        except BadRowError as e:
            out.removed.append(bad_row(name, i, record, e, options))
            continue
        out.rows.append(make_row(name, i, data_source, instruction, input_, output))
    return out


def bad_row(name: str, index: int, record: Any, err: BadRowError, options: FormatOptions) -> dict[str, Any]:
    message = f"source {name!r} row {index}: {err}"
    if options.on_bad_row == "stop":
        raise BadRowError(f"{message} (dataset.on_bad_row is 'stop'; set it to 'skip' to list such rows in "
                          f"removed.csv and go on)")
    return removal(row_id(name, index), name, "format", "bad_row", detail=message, instruction=_preview(record))


def _preview(record: Any) -> str:
    if isinstance(record, dict):
        for key in ("instruction", "question", "Question", "problem", "problem_text", "prompt", "text", "context",
                    "Problem_Statement", "Problem Statement"):
            if isinstance(record.get(key), str):
                return record[key]
        if isinstance(record.get("question"), dict):
            return str(record["question"].get("problem", ""))
    return ""


def format_scienceqa(records: list[Any], options: FormatOptions) -> Formatted:
    """scienceqa_format.py, step by step in its order.

    Drop six skills and rows with an empty solution; instruction = question + "\\nA: ..." options; drop repeated
    instructions (first kept); keep the lecture as input only when the question refers to it; drop inputs over
    400 words.
    """
    out = Formatted()
    seen: dict[str, str] = {}
    for i, record in enumerate(records):
        rid = row_id("scienceqa", i)
        try:
            question, choices = get(record, "question", str), get(record, "choices", list)
            skill, solution = get(record, "skill", str), get(record, "solution", str)
            lecture = get(record, "lecture", str)
        except BadRowError as e:
            out.removed.append(bad_row("scienceqa", i, record, e, options))
            continue
        if skill in SCIENCEQA_SKIPPED_SKILLS:
            out.removed.append(removal(rid, "scienceqa", "format", "excluded_skill", detail=skill,
                                       instruction=question))
            continue
        if solution == "":
            out.removed.append(removal(rid, "scienceqa", "format", "no_solution", instruction=question))
            continue
        instruction = question + "\n" + "\n".join(f"{_letter(k)}: {c}" for k, c in enumerate(choices))
        if instruction in seen:
            out.removed.append(removal(rid, "scienceqa", "format", "duplicate_in_source",
                                       duplicate_of=seen[instruction], instruction=instruction))
            continue
        seen[instruction] = rid
        input_ = lecture if any(phrase in instruction for phrase in SCIENCEQA_NEEDS_LECTURE) else ""
        if len(input_.split()) > SCIENCEQA_MAX_INPUT_WORDS:
            out.removed.append(removal(rid, "scienceqa", "format", "input_over_400_words", instruction=instruction))
            continue
        out.rows.append(make_row("scienceqa", i, SOURCE_INFO["scienceqa"].data_source, instruction, input_,
                                 solution))
    return out


@dataclass
class PrmSolution:
    row_id: str
    problem: str
    output: str


def prm800k_solutions(records: list[Any], options: FormatOptions) -> tuple[list[PrmSolution], list[dict]]:
    """convert_prm.py: solved samples whose found answer equals the ground truth, one rated-1 completion per step.

    Per step a random completion rated 1 is taken, preferring those with "# Answer"; a human completion rated 1
    is appended too; steps are joined with " ". The original's ``random`` was unseeded; here one
    ``random.Random(run.seed)`` draws in record order, so a rebuild is reproducible.
    """
    rng = random.Random(options.seed)
    solutions: list[PrmSolution] = []
    removed: list[dict] = []
    for i, record in enumerate(records):
        rid = row_id("prm800k", i)
        try:
            problem = get(get(record, "question", dict), "problem", str)
            truth = get(record["question"], "ground_truth_answer", str, type(None))
            label = get(record, "label", dict)
            finish_reason = get(label, "finish_reason", str, type(None))
            if finish_reason != "solution":
                removed.append(removal(rid, "prm800k", "format", "not_solved", detail=str(finish_reason),
                                       instruction=problem))
                continue
            output = " ".join(_prm_step_texts(get(label, "steps", list), rng))
        except BadRowError as e:
            removed.append(bad_row("prm800k", i, record, e, options))
            continue
        marker_at = output.rfind(PRM_ANSWER_MARKER)
        if marker_at == -1:
            removed.append(removal(rid, "prm800k", "format", "answer_not_found", instruction=problem))
        elif output[marker_at + len(PRM_ANSWER_MARKER):].strip() != truth:
            removed.append(removal(rid, "prm800k", "format", "wrong_answer", instruction=problem,
                                   detail=f"found {output[marker_at + len(PRM_ANSWER_MARKER):].strip()[:60]!r}, "
                                          f"ground truth {truth!r}"))
        else:
            solutions.append(PrmSolution(rid, problem, output))
    return solutions, removed


def _prm_step_texts(steps: list[Any], rng: random.Random) -> list[str]:
    texts = []
    for step in steps:
        if not isinstance(step, dict):
            raise BadRowError(f"field 'label.steps': expected records, got {type(step).__name__}")
        completions = step.get("completions")
        if completions is not None:
            rated = [c for c in completions if get(c, "rating", int, type(None)) == 1]
            with_answer = [c for c in rated if PRM_ANSWER_MARKER in get(c, "text", str)]
            pool = with_answer or rated
            if pool:
                chosen = get(rng.choice(pool), "text", str)
                if chosen:
                    texts.append(chosen)
        human = step.get("human_completion")
        if human and human.get("rating") == 1:
            texts.append(get(human, "text", str))
    return texts


def unwrap_boxed(solution: str) -> str:
    """update_MATH.py L110-111: ``\\boxed{x}`` -> ``x`` with the original's greedy regex.

    ``.*`` does not cross lines and runs to the line's last ``}``, so "\\boxed{2}, {x}" becomes "2}, {x" as it did
    in the original.
    """
    if re.search(r"\\boxed{(.*)\}", solution):
        return re.sub(r"\\boxed\{(.*)\}", r"\1", solution)
    return solution


def format_math(records: list[Any], prm: Optional[list[PrmSolution]], options: FormatOptions) -> Formatted:
    """update_MATH.py: problem -> solution over train + test; PRM800K solutions replace matching problems' ones.

    A PRM800K sample whose problem is exactly a MATH problem replaces that problem's solution (the first MATH row
    with that text; a later sample of the same problem overwrites an earlier one), with its "# Answer" line cut.
    Then every solution has ``\\boxed{}`` unwrapped. The rows keep the MATH row ids; the PRM800K samples that were
    not used are listed as removed.
    """
    out = format_records("math", records, lambda r: (get(r, "problem", str), "", get(r, "solution", str)),
                         options)
    first_row_of: dict[str, int] = {}
    for k, row in enumerate(out.rows):
        first_row_of.setdefault(row["instruction"], k)
    used_by: dict[int, PrmSolution] = {}
    for solution in prm or []:
        k = first_row_of.get(solution.problem)
        if k is None:
            out.removed.append(removal(solution.row_id, "prm800k", "format", "no_math_problem",
                                       instruction=solution.problem))
            continue
        if k in used_by:
            earlier = used_by[k]
            out.removed.append(removal(earlier.row_id, "prm800k", "format", "superseded",
                                       duplicate_of=solution.row_id, instruction=earlier.problem))
        used_by[k] = solution
        out.rows[k]["output"] = re.sub(r"# Answer\n\n.*", "", solution.output)
    if options.math_unwrap_boxed:
        for row in out.rows:
            row["output"] = unwrap_boxed(row["output"])
    return out


RECORD_FORMATTERS: dict[str, Callable[[Any], tuple[Any, Any, Any]]] = {
    "scibench": format_scibench,
    "reclor": format_reclor,
    "leetcode": format_leetcode,
    "airoboros": format_airoboros,
    "tigerbot": format_tigerbot,
    "arb": format_arb,
    "guanaco": format_guanaco,
    "openbookqa": format_openbookqa,
}


def format_source(name: str, records: list[Any], options: FormatOptions,
                  prm: Optional[list[PrmSolution]] = None) -> Formatted:
    """Rows of one source (``prm`` only for math: the usable PRM800K samples that may replace its solutions)."""
    if name == "scienceqa":
        return format_scienceqa(records, options)
    if name == "math":
        return format_math(records, prm, options)
    if name == "sciq":
        rng = random.Random(options.seed)
        return format_records(name, records, lambda r: format_sciq(r, rng), options)
    if name == "theoremqa":
        return format_records(name, records, lambda r: format_theoremqa(r, options.theoremqa_theorem), options)
    if name in RECORD_FORMATTERS:
        return format_records(name, records, RECORD_FORMATTERS[name], options)
    raise ValueError(f"no formatter for source {name!r} (prm800k is merged into math by format_math)")
