"""The in-container agent (agent.py, stdlib only) and its wire protocol (protocol.py)."""
