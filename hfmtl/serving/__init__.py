"""``hfmtl serve``: every task of a saved model behind an HTTP JSON API, with dynamic batching.

    app.py       the FastAPI app (why FastAPI: see its docstring) and its one-line JSON errors
    routes.py    POST /predict, GET /tasks, GET /health (OpenAPI docs at /docs and /openapi.json)
    planning.py  a /predict body checked against the model's tasks, as predict_many entries, and back
    batching.py  DynamicBatcher: concurrent requests share model calls, on one worker thread
    limits.py    the cap on request bodies (413)
    schemas.py   the JSON bodies, as pydantic models
    server.py    uvicorn on a socket of our own; graceful SIGTERM / SIGINT

Everything but batching.py and planning.py needs the ``serve`` extra (``pip install "hfmtl[serve]"``);
nothing here is imported by ``import hfmtl``. docs/serving.md describes the endpoints and options.
"""
