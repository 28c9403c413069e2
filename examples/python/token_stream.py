"""A generator that yields a text token by token, like a language model does, for streaming.escript."""
import time


def tokens(text, delay=0.05):
    for word in text.split():
        time.sleep(delay)  # the "model" thinking
        yield word
