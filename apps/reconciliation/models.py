# Models arrive with this app's issue; see DESIGN.md §2–§3 for where they will live.
