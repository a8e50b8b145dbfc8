"""The staff community board: posts and likes."""
from handlers import changed, create_in, delete_in, list_of, one_of, update_in
from models import resources


def list_community_posts(**params):
    """One page of the organization's posts, newest first."""
    return list_of("community_post", **params)


def get_community_post(id_: str, embed=None):
    """One post."""
    return one_of("community_post", id_, embed=embed)


def create_community_post(body: dict):
    """Post on the board as the caller."""
    return create_in("community_post", body)


def update_community_post(id_: str, body: dict):
    """Change the fields sent of a post (its author or an admin)."""
    return update_in("community_post", id_, body)


def delete_community_post(id_: str):
    """Soft-delete a post (its author or an admin)."""
    return delete_in("community_post", id_)


def like_community_post(id_: str):
    """Like a post as the caller, once (liking it again changes nothing)."""
    return changed("community_post", id_, resources.like, action="like")


def unlike_community_post(id_: str):
    """Take the caller's like of a post back."""
    return changed("community_post", id_, resources.unlike, action="unlike")
