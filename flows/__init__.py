"""Prefect flows, one module per stage, plus the parent `retrain` flow."""


def __getattr__(name: str):
    # Lazy so that importing one flow module does not import every stage's dependencies.
    if name == "STAGE_FLOWS":
        from yume.flows.curate_real import curate_real

        return {"curate_real": curate_real}
    raise AttributeError(name)
