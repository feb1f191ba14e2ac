"""Prefect flows, one module per stage, plus the parent `retrain` flow."""

# Stage names in DAG order (the keys of STAGE_FLOWS); kept import-free for the CLI.
STAGE_NAMES = ("curate_real", "recaption", "synthesize_t2v", "synthesize_events", "score_and_filter",
               "build_training_set", "train_foundation", "distill", "evaluate")



def __getattr__(name: str):
    # Lazy so that importing one flow module does not import every stage's dependencies.
    if name == "STAGE_FLOWS":
        from yume.flows.build_training_set import build_training_set
        from yume.flows.curate_real import curate_real
        from yume.flows.distill import distill
        from yume.flows.evaluate import evaluate
        from yume.flows.recaption import recaption
        from yume.flows.score_and_filter import score_and_filter
        from yume.flows.synthesize_events import synthesize_events
        from yume.flows.synthesize_t2v import synthesize_t2v
        from yume.flows.train_foundation import train_foundation

        return {
            "curate_real": curate_real,
            "recaption": recaption,
            "synthesize_t2v": synthesize_t2v,
            "synthesize_events": synthesize_events,
            "score_and_filter": score_and_filter,
            "build_training_set": build_training_set,
            "train_foundation": train_foundation,
            "distill": distill,
            "evaluate": evaluate,
        }
    raise AttributeError(name)
