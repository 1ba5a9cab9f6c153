"""Attacks: explanation attacks against one method's maps, and attacks on the prediction."""
