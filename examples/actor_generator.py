"""An actor with generator methods: a stateful tokenizer that streams its output.

    python examples/actor_generator.py

A ``Vocabulary`` actor keeps state between calls (the words it has seen). Its ``tokenize``
method is a generator: each yield becomes its own key in the cluster as soon as it is produced,
so the driver reads the first tokens while the actor is still working, and a task can take a
yielded ref as its argument. Calls to one actor run in call order. Starts an embedded cluster.
"""

from __future__ import annotations

import daskgen as ray

TEXT = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "the dog sleeps",
]


@ray.remote
class Vocabulary:
    def __init__(self):
        self.ids = {}

    def tokenize(self, sentence):
        """Yield one (word, id) pair per word; new words get the next id."""
        for word in sentence.split():
            yield word, self.ids.setdefault(word, len(self.ids))

    def size(self):
        return len(self.ids)


@ray.remote
def shout(token):
    word, word_id = token
    return f"{word.upper()}#{word_id}"


vocab = Vocabulary.remote()
for sentence in TEXT:
    # Streaming (the default for a generator method): each ref arrives as its word is read.
    tokens = [ray.get(ref) for ref in vocab.tokenize.remote(sentence)]
    print(f"{sentence!r} -> {tokens}")

# A dynamic generator method, and a yielded ref passed straight to another task.
refs = list(ray.get(vocab.tokenize.options(num_returns="dynamic").remote("quick dog")))
print("shouted:", ray.get([shout.remote(ref) for ref in refs]))
print("vocabulary size:", ray.get(vocab.size.remote()))

ray.kill(vocab)
ray.shutdown()
