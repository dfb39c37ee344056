"""Running a plan: the image track (run.image) and the CT track (run.ct), pretraining then evaluating what is not done."""
