"""Rollout endings, option sets and chat prompts the reward tests share (not a test module)."""

WORSTER = {"A": "Moebius syndrome", "B": "Spinal muscular atrophy (bulbar form)", "C": "Worster-Drought syndrome",
           "D": "Anterior opercular syndrome (acquired suprabulbar palsy)"}
PUBMED = {"A": "yes", "B": "no", "C": "maybe"}
# Endings of the paper's real majority / minority rollouts (Appendix E, Table 15).
MAJORITY = "Given the specific combination of symptoms ... **Worster-Drought syndrome** is the most likely diagnosis.\n" \
           "### Final Answer: The final answer is C."
MINORITY = "### Step 6: Final Diagnosis ... the most likely diagnosis is Moebius syndrome.\n### Final Answer The final answer is A."
RAMBLE = "The child has drooling. Drooling is common. The child has drooling. The child"  # SmolLM2-style, truncated
PROMPT = "<|im_start|>user\nQuestion: A 5-year-old child ...\nA. Moebius syndrome\n...<|im_end|>\n<|im_start|>assistant\n"
F4_PROMPT = ("<|im_start|>user\nYou are a professional medical expert ... Please format the final answer at the end of your "
             'response as: The answer is [LETTER]. Example: "The answer is A". Question: Which syndrome?\nA. Moebius syndrome\n'
             "B. Spinal muscular atrophy (bulbar form)\nC. Worster-Drought syndrome\n"
             "D. Anterior opercular syndrome (acquired suprabulbar palsy)<|im_end|>\n<|im_start|>assistant\n")
