"""Rebuild data/questions.parquet: 100 prompts in the style of the original demo."""

from pathlib import Path

import polars as pl

SYSTEM = "You are a calculator. Answer with the number only."


def main() -> None:
    """Write the 100 questions with their expected answers."""
    pairs = [(i, i) for i in range(1, 101)]
    pairs[52] = (53, 53)  # "What is 53 + 53?", as in the original README
    df = pl.DataFrame(
        {
            "id": list(range(len(pairs))),
            "messages": [
                [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"What is {a} + {b}?"},
                ]
                for a, b in pairs
            ],
            "expected": [str(a + b) for a, b in pairs],
        }
    )
    df.write_parquet(Path(__file__).with_name("questions.parquet"))


if __name__ == "__main__":
    main()
