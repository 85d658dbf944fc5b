"""Knobs for every host of every environment. Each deploy module documents its defaults at its top;
set a key here (or in <env>.py / <group>.py) only to override one.
"""
