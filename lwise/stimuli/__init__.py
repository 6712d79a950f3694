"""Stimulus sets: the natural images (`natural`), their enhanced versions (`enhance`) and the
contact sheet that shows them side by side (`contact_sheet`)."""
