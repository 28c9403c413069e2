"""A scikit-learn classifier served from Erlang (ml.escript).

The model is trained once per port process (module globals live in the port's interpreter, shared by
its contexts), on the digits dataset that scikit-learn ships (no download), with a fixed split and
seed, so every port trains the same model.
"""
import threading

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

_lock = threading.Lock()
_model = None
_split = None


def _data():
    global _split
    if _split is None:
        digits = load_digits()
        _split = train_test_split(digits.data, digits.target, test_size=0.3, random_state=0,
                                  stratify=digits.target)
    return _split


def _trained():
    global _model
    with _lock:
        if _model is None:
            x_train, _x_test, y_train, _y_test = _data()
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            model.fit(x_train, y_train)
            _model = model
        return _model


def warm_up():
    """Trains (if needed) and returns the number of training rows."""
    _trained()
    return len(_data()[0])


def test_set():
    """The held-out rows and labels, as plain lists for Erlang."""
    _x_train, x_test, _y_train, y_test = _data()
    return [[float(v) for v in row] for row in x_test], [int(y) for y in y_test]


def predict(row):
    """The predicted digit for one row of 64 pixel values."""
    return int(_trained().predict([row])[0])
