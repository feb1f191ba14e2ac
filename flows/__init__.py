"""Prefect flows, one module per stage, plus the parent `retrain` flow."""


def __getattr__(name: str):
    # Lazy so that importing one flow module does not import every stage's dependencies.
    if name == "STAGE_FLOWS":
        from yume.flows.curate_real import curate_real
        from yume.flows.recaption import recaption
        from yume.flows.score_and_filter import score_and_filter
        from yume.flows.synthesize_events import synthesize_events
        from yume.flows.synthesize_t2v import synthesize_t2v

        return {
            "curate_real": curate_real,
            "recaption": recaption,
            "synthesize_t2v": synthesize_t2v,
            "synthesize_events": synthesize_events,
            "score_and_filter": score_and_filter,
        }
    raise AttributeError(name)
