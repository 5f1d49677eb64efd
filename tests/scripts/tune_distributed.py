"""One process of a distributed keras-tuner search (keras-tuner's own
recipe: every process runs this same script; the environment says which
it is). Usage: tune_distributed.py SHARED_DIR WORKERS

- KERASTUNER_TUNER_ID: "chief" runs the oracle, a gRPC server on
  KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT (its `search()` only serves,
  it trains nothing); "tuner0", "tuner1", ... are the workers, which ask
  the chief for trials and train them.
- Every process uses the same keras-tuner project, SHARED_DIR/tuner/digits,
  and the same kcallbacks run directory, SHARED_DIR/runs: each trial's run
  goes to SHARED_DIR/runs/trial_<id>.
- The backend comes from KERAS_BACKEND.

A worker prints `TRIAL <id> <tuner id> <pid>` as it starts a trial and
`SEARCH_DONE <tuner id>` when the chief has no more trials for it. So that
both workers take part however fast one of them starts, the workers wait
for each other (files in SHARED_DIR/ready, up to 5 minutes) before asking
for their first trial: a test harness's barrier, not part of the recipe.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import kcallbacks  # noqa: E402

shared, workers = sys.argv[1], int(sys.argv[2])
tuner_id = os.environ["KERASTUNER_TUNER_ID"]
MAX_TRIALS = 4
EPOCHS = 2

data = load_digits()
x = (data.data[:384] / 16.0).astype("float32")
y = data.target[:384].astype("int32")
x_train, y_train, x_val, y_val = x[:256], y[:256], x[256:], y[256:]


def build_model(hp):
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(hp.Choice("units", [8, 16, 32]), activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Choice("learning_rate", [1e-3, 1e-2])),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class AnnouncedRandomSearch(keras_tuner.RandomSearch):
    def run_trial(self, trial, *args, **kwargs):
        print(f"TRIAL {trial.trial_id} {self.tuner_id} {os.getpid()}", flush=True)
        return super().run_trial(trial, *args, **kwargs)


tuner = AnnouncedRandomSearch(
    build_model,
    objective="val_loss",
    max_trials=MAX_TRIALS,
    seed=1,
    # Never True here: every process would delete the others' project.
    overwrite=False,
    directory=os.path.join(shared, "tuner"),
    project_name="digits",
)

if tuner_id != "chief":
    ready = os.path.join(shared, "ready")
    os.makedirs(ready, exist_ok=True)
    open(os.path.join(ready, tuner_id), "w").close()
    deadline = time.monotonic() + 300
    while len(os.listdir(ready)) < workers:
        if time.monotonic() > deadline:
            sys.exit(f"{tuner_id}: the other workers never became ready")
        time.sleep(0.1)
else:
    print("CHIEF_SERVING", flush=True)

tuner.search(
    x_train, y_train, epochs=EPOCHS, batch_size=32, validation_data=(x_val, y_val),
    verbose=0, callbacks=kcallbacks.standard_callbacks(os.path.join(shared, "runs")),
)
print(f"SEARCH_DONE {tuner_id}", flush=True)
