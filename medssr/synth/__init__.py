"""Question synthesis (paper §3.2, Eq. 2): prompts F.1/F.2, the α/ρ plan, parse/validate, contamination filter,
the stage's run loop, and the LLM classifiers (F.3 reasoning filter, RareDis-Sub category) used by prepare."""

from medssr.synth.classify import classify_category, classify_reasoning, parse_category, parse_reasoning_label
from medssr.synth.contamination import OverlapIndex, build_index
from medssr.synth.parse import QUESTION_SCHEMA, REASONS, InvalidQuestion, ParsedQuestion, parse_question
from medssr.synth.plan import Attempt, entity_pool, plan_attempt
from medssr.synth.prompts import Prompt, PromptError, load_prompt
from medssr.synth.run import SynthError, SynthInputs, load_inputs, run_synthesize

__all__ = ["QUESTION_SCHEMA", "REASONS", "Attempt", "InvalidQuestion", "OverlapIndex", "ParsedQuestion", "Prompt", "PromptError",
           "SynthError", "SynthInputs", "build_index", "classify_category", "classify_reasoning", "entity_pool", "load_inputs",
           "load_prompt", "parse_category", "parse_question", "parse_reasoning_label", "plan_attempt", "run_synthesize"]
