"""Writes data/demo/{train,validation}.csv: short movie-review sentences written for kdpipe's demo.

Hand-written sentences plus hand-written aspects x verdicts, shuffled with a fixed seed. Re-running gives
the same files. This is demo data for a fast offline run, not a benchmark."""

import csv
import random
from pathlib import Path

POSITIVE = [
    "An absolute joy from start to finish.", "I laughed, I cried, I want to see it again.",
    "The best film I have seen this year.", "A warm, clever and beautifully acted story.",
    "Every scene feels alive.", "It earns every minute of its running time.", "A small gem that deserves an audience.",
    "Smart, funny and surprisingly moving.", "The cast has wonderful chemistry.", "I left the theater smiling.",
    "A triumph of careful, patient storytelling.", "Gorgeous to look at and easy to love.",
    "Not as bad as the trailer suggested; in fact it is great.", "A crowd pleaser with real heart.",
    "Funny without ever being cheap.", "The ending is perfect.", "A bold film that pays off.",
    "Tender, sharp and full of life.", "It held my attention the whole way.", "I would happily watch it twice.",
    "A delightful surprise.", "The director knows exactly what she is doing.", "Charming and genuinely touching.",
    "A thrilling ride with a lot of heart.", "The kind of movie that stays with you.",
    "Wonderfully written and wonderfully played.", "Fresh, confident and fun.", "A rare sequel that beats the original.",
    "It made me call my mother afterwards.", "Pure pleasure.",
]
NEGATIVE = [
    "A dull, lifeless mess.", "I checked my watch every ten minutes.", "The worst film I have seen this year.",
    "Nothing works, not even the jokes.", "A waste of a talented cast.", "It drags on forever and goes nowhere.",
    "Loud, messy and instantly forgettable.", "I wanted to walk out halfway through.", "The plot makes no sense at all.",
    "Flat characters and clumsy dialogue.", "A tedious chore to sit through.", "Ugly to look at and hard to follow.",
    "Not worth the price of the ticket.", "Painfully unfunny.", "The ending ruins everything before it.",
    "A lazy cash grab.", "Bored me to tears.", "Cheap, shallow and cynical.", "I have already forgotten most of it.",
    "A sequel nobody needed.", "The acting is wooden throughout.", "Confusing, slow and pointless.",
    "It tries hard and fails harder.", "Two hours I will never get back.", "A joyless slog.",
    "The script is a collection of cliches.", "Even the music is annoying.", "Nothing happens, and slowly.",
    "A disappointment on every level.", "Avoid it.",
]
ASPECTS = ["The acting", "The plot", "The soundtrack", "The ending", "The dialogue", "The cinematography",
           "The pacing", "The cast", "The script", "The direction", "The visuals", "The story", "The humor",
           "The lead performance", "The final act"]
GOOD = ["is superb", "is a delight", "works beautifully", "is sharp and witty", "is genuinely moving",
        "is wonderful", "is brilliant", "feels fresh", "is gripping", "is a real pleasure"]
BAD = ["is a mess", "is painfully dull", "falls completely flat", "is clumsy and boring", "is a disaster",
       "is awful", "feels lazy", "is tedious", "is embarrassing", "is a real letdown"]


def rows():
    out = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]
    out += [(f"{a} {v}.", "positive") for a in ASPECTS for v in GOOD]
    out += [(f"{a} {v}.", "negative") for a in ASPECTS for v in BAD]
    return out


def main():
    data = rows()
    random.Random(13).shuffle(data)
    n_val = len(data) // 5
    folder = Path(__file__).resolve().parents[1] / "data" / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("validation.csv", data[:n_val]), ("train.csv", data[n_val:])):
        with open(folder / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    print(f"{len(data) - n_val} train, {n_val} validation rows in {folder}")


if __name__ == "__main__":
    main()
