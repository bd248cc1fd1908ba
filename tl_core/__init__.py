"""TransferLab's engine: data, backbones, strategies, training and the experiment store.

Never imports streamlit; the dashboard (app.py, pages/) calls into it.
"""
