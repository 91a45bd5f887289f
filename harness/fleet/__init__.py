"""The suite spread over several test hosts: hosts (the hosts file),
spawner (Avocado's remote spawner, bounded: a lost host ends its tests as
errors), netns (test hosts made on this machine, for the fleet's own test).
"""
