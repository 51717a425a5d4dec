"""No DataFrame: answer a list of message lists, as the original handler's users do.

python examples/plain_python.py
"""

import os

from polars_azurechat import complete_many
from polars_azurechat.emulator import Emulator

message_sequences = [
    [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": f"What is {n} + {n}?"},
    ]
    for n in (53, 100, 1, 5)
]

with Emulator() as emu:  # drop this block (and set AZURE_OPENAI_*) to use Azure
    os.environ.update(emu.env())
    answers = complete_many(message_sequences, max_tokens=20, max_concurrency=100)

results = [
    {"input": seq[-1]["content"], "content": answer}
    for seq, answer in zip(message_sequences, answers, strict=True)
]
print(results[:2])
