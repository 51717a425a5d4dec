"""Running a job where the data lives: Spark's machinery. Not meant for outside use.

:mod:`polars_azurechat.spark` is what users import; this package holds what it is
made of: the Polars, Arrow and Spark types of the columns (``arrow``), the job each
Python worker keeps and the function every partition goes through (``worker``), the
job's summary gathered from the executors (``tally``), the quota each task gets
(``quota``) and batch mode from the driver (``batch``).
"""
