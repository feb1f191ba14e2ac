"""`yume play`: explore a trained world model live in the browser with W/A/S/D and the mouse.

``protocol`` (the WebSocket messages), ``session`` (one player's chunk stream and recording), ``server``
(FastAPI app, per-session worker threads, bounded queues), ``launch`` (checkpoint + start -> server),
``bench`` (``yume bench play``: a scripted WebSocket client against a real server).
"""
