"""The steps scenarios are made of, one module each.

A module holds one step whole: its action (what the run does to the cell's cluster), its
plan text (what ``--plan`` prints) and the ``Step`` joining them under its name, so that
what a step says and what it does are read side by side. A scenario (``scenarios/*.py``)
lists the steps it runs, in order; the plan prints the same list the run executes.

The actions take the cell's ``CellRun`` (``e2e/cell.py``): the cell's state, its result and
its cluster group. Steps that share an action import it from the step that owns it (a
migration swaps as ``swap`` does; inference is reached as ``check_inference`` reaches it).
"""
