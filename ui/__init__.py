"""The dashboard's presentation: Streamlit and Plotly only (tl_core imports neither).

  charts    Plotly figures from runs and metric rows
  format    numbers, notes and messages worded for the screen
  session   the per-process store, the pages' router guard
"""
