"""Texts the engine tests score: short, multilingual, emoji, whitespace runs, and
repeated sentences sized in tokens so that the truncation cases are real."""

from __future__ import annotations

PARIS = "Paris is the capital and most populous city of France, on the Seine. "  # 16 XLM-R tokens
PANDA = "The giant panda lives in bamboo forests in the mountains of central China. "  # 20 XLM-R tokens
PANDA_ZH = "大熊猫是一种熊科动物，主要栖息在中国四川。"

LONG = PARIS * 60  # ~960 XLM-R tokens, ~1000 Qwen3 tokens, ~900 BERT tokens
MEDIUM = PANDA * 15  # ~300 XLM-R tokens: over half of a 512 budget
SHORTISH = PANDA * 9  # ~180 XLM-R tokens: under half of a 512 budget
JUST_OVER = PARIS * 16  # ~256 XLM-R tokens: two of them overflow a 508-token body by a few
