"""The HTTP API behind `isol8 serve`: app (create_app, which names the modules it assembles), auth
(keys), sessions, engines, policy.

Only this package imports FastAPI, and nothing in `engine` imports this package, so `import engine`
stays light. Uvicorn is imported only by the command that serves (it pulls in click).
"""
