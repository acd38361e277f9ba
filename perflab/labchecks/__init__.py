"""One module per lab: labNN.py defines LAB, the lab's exercises and checks (see perflab.grader)."""
