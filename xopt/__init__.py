"""xopt: does the cross-lingual gain of intermediate-task training survive compilation?"""

__version__ = "0.1.0"
