"""The MajorDomo: reads the project's recipes, plans what is out of date, and hands steps to chefs.

It speaks to chefs only through `protocol`; it never imports `chefs`.
"""
