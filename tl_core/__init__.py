"""TransferLab's engine: data, backbones, strategies, training, the experiment store and the
service layer both front ends call (docs/architecture.md). Never imports streamlit or plotly.
"""
