"""The attack stage and the attack interface; attacks by family: revival/, prompt/, relearn.py."""
